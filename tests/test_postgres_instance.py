"""The deployment's Dagster instance (``deploy/dagster.yaml``) on the real PostgreSQL server.

Each test gets its own schema (through libpq's ``PGOPTIONS`` search path), so runs of the
suite never collide; the instance is built exactly as a deployment builds it: from a
``DAGSTER_HOME`` holding that file, with credentials in ``DAGSTER_PG_*``.
"""

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from hawkeye_dagster.assets.partitions import snapshot_partitions
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.sensors.snapshots import snapshot_publication_sensor
from lake_factory import PG_URL, RANKER, START, postgres_schema, write_lake
from sensor_ticks import store_tick

pytestmark = pytest.mark.postgres

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"
CONCURRENT_RUNS = 20


@dg.asset(partitions_def=snapshot_partitions, group_name="test")
def snapshot_diagnosis(context: dg.AssetExecutionContext, storage: HawkeyeStorage):
    """Stands in for the snapshot diagnostics: one JSON output per snapshot partition."""
    path = storage.write_json({"snapshot": context.partition_key}, "reports",
                              f"{context.partition_key}.json")
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path))})


@pytest.fixture
def dagster_home(tmp_path, monkeypatch):
    """A DAGSTER_HOME with the deployment's dagster.yaml, pointed at a fresh schema."""
    url = urlsplit(PG_URL.replace("+psycopg2", ""))
    with postgres_schema() as (_, schema):
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(DEPLOY, home / "dagster.yaml")
        for name, value in {"HOST": url.hostname, "PORT": str(url.port or 5432),
                            "USER": url.username, "PASSWORD": url.password or "",
                            "DB": url.path.lstrip("/")}.items():
            monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
        monkeypatch.setenv("PGOPTIONS", f"-csearch_path={schema}")
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        yield home, schema


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def test_deploy_yaml_puts_every_storage_in_postgres(dagster_home):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import (PostgresEventLogStorage, PostgresRunStorage,
                                  PostgresScheduleStorage)

    home, schema = dagster_home
    with _instance(home) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 4
        assert {limit["key"] for limit in queue.tag_concurrency_limits} >= {"hawkeye/model_id"}
    with sa.create_engine(PG_URL).connect() as conn:
        tables = set(conn.execute(sa.text(
            "select table_name from information_schema.tables where table_schema = :s"),
            {"s": schema}).scalars())
    assert {"runs", "event_logs", "instigators", "dynamic_partitions"} <= tables


def _append_snapshots(lake: Path, name: str, ids: list[str], published: pd.Timestamp) -> None:
    pq.write_table(pa.table({
        "model_id": [RANKER] * len(ids), "snapshot_id": ids,
        "published_at": pa.array([published] * len(ids), pa.timestamp("us", tz="UTC")),
        "training_run_id": ["run 2"] * len(ids),
        "artifact": [f"artifacts/{s}.pt2" for s in ids]}), lake / "snapshots" / f"{name}.parquet")


def _tick(home: Path, lake: Path, cursor: str | None) -> tuple[list[str], str | None]:
    """One sensor evaluation as a freshly started daemon makes it: a new instance (new
    connections) and a new reader; dynamic partitions are stored as the daemon stores them."""
    with _instance(home) as instance:
        context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                          resources={"telemetry": TelemetrySource(lake=str(lake))})
        result = snapshot_publication_sensor(context)
        store_tick(instance, result, snapshot_publication_sensor)
        return [r.run_key for r in result.run_requests or []], result.cursor or cursor


def test_sensor_cursor_and_partitions_survive_restarts(dagster_home, tmp_path):
    home, _ = dagster_home
    lake = write_lake(tmp_path / "lake", artifacts=False)
    launched, cursor = _tick(home, lake, None)
    assert launched == ["ads@1", "ranker@1", "ranker@2"]  # the history too, oldest first
    for i in range(3):  # publications between restarts
        _append_snapshots(lake, f"batch {i}", [f"ranker@{10 + i}a", f"ranker@{10 + i}b"],
                          START + pd.Timedelta(days=2 + i))
        keys, cursor = _tick(home, lake, cursor)
        launched += keys
        keys, cursor = _tick(home, lake, cursor)  # nothing new: nothing launched
        launched += keys
    assert launched == ["ads@1", "ranker@1", "ranker@2"] + [
        f"ranker@{10 + i}{s}" for i in range(3) for s in "ab"]
    with _instance(home) as instance:
        assert set(instance.get_dynamic_partitions(snapshot_partitions.name)) == {
            "ranker@1", "ranker@2", "ads@1", *launched}


def _diagnose(snapshot_id: str, storage_root: str) -> tuple[str, str]:
    """A run of its own process: registers its partition and materializes it."""
    instance = dg.DagsterInstance.get()  # from DAGSTER_HOME, like a run worker
    instance.add_dynamic_partitions(snapshot_partitions.name, [snapshot_id])
    result = dg.materialize([snapshot_diagnosis], instance=instance, partition_key=snapshot_id,
                            resources={"storage": HawkeyeStorage(root=storage_root)},
                            tags={"hawkeye/model_id": RANKER})
    return result.run_id, result.dagster_run.status.value


def test_concurrent_partitioned_runs_lose_nothing(dagster_home, tmp_path):
    home, _ = dagster_home
    with _instance(home):  # create the tables once, as `dagster instance migrate` would
        pass
    snapshots = [f"ranker@{i:02d} 'ü'" for i in range(CONCURRENT_RUNS)]
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(_diagnose, snapshots, [str(tmp_path / "out")] * len(snapshots)))
    assert [status for _, status in outcomes] == ["SUCCESS"] * CONCURRENT_RUNS
    with _instance(home) as instance:
        runs = instance.get_runs()
        assert {r.run_id for r in runs} == {run_id for run_id, _ in outcomes}
        assert set(instance.get_dynamic_partitions(snapshot_partitions.name)) == set(snapshots)
        key = snapshot_diagnosis.key
        assert instance.get_materialized_partitions(key) == set(snapshots)
        events = instance.fetch_materializations(key, limit=10 * CONCURRENT_RUNS).records
        assert sorted(e.partition_key for e in events) == sorted(snapshots)
    assert sorted(p.stem for p in (tmp_path / "out" / "reports").iterdir()) == sorted(snapshots)
