import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hawkeye_dagster.assets.snapshots import SNAPSHOT_DIAGNOSTICS
from hawkeye_dagster.lake.tail import TailCursor
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.sensors.snapshots import (
    MAX_PER_TICK, snapshot_publication_sensor, training_partition_sensor)
from lake_factory import DATASETS, RANKER, START, TRAIN_PARTITIONS, postgres_schema, write_lake
from sensor_ticks import store_tick

#: the snapshots of ``write_lake``, oldest first (ties by id)
HISTORY = ["ads@1", "ranker@1", "ranker@2"]


class Ticker:
    """Evaluates a sensor tick after tick on a real instance, applying what the daemon would:
    the dynamic partition requests and the cursor; remembers every run key launched. Ticks go
    through ``evaluate_tick``, which resolves the run requests against the sensor's job."""

    def __init__(self, instance, telemetry: TelemetrySource, sensor=snapshot_publication_sensor):
        self.instance, self.telemetry, self.sensor = instance, telemetry, sensor
        # the job's assets, to resolve its partitions; nothing is materialized
        self.defs = dg.Definitions(assets=SNAPSHOT_DIAGNOSTICS, sensors=[sensor], resources={
            "telemetry": telemetry, "storage": HawkeyeStorage(root="never-written")})
        self.cursor = None
        self.launched: list[str] = []

    def tick(self):
        with dg.build_sensor_context(instance_ref=self.instance.get_ref(), cursor=self.cursor,
                                     definitions=self.defs,
                                     resources={"telemetry": self.telemetry}) as context:
            result = self.sensor.evaluate_tick(context)
        store_tick(self.instance, result, self.sensor)
        self.cursor = result.cursor or self.cursor
        for run in result.run_requests or []:
            assert run.partition_key == run.run_key
            self.launched.append(run.run_key)
        return result

    def partitions(self, name="snapshot") -> set[str]:
        return set(self.instance.get_dynamic_partitions(name))


def append_snapshots(lake: Path, name: str, ids: list[str], published: pd.Timestamp) -> None:
    """A new file in the snapshots table (files are never rewritten), as a publisher adds one."""
    pq.write_table(pa.table({
        "model_id": [RANKER] * len(ids), "snapshot_id": ids,
        "published_at": pa.array([published] * len(ids), pa.timestamp("us", tz="UTC")),
        "training_run_id": ["run 2"] * len(ids),
        "artifact": [f"artifacts/{s}.pt2" for s in ids]}), lake / "snapshots" / f"{name}.parquet")


@pytest.fixture
def lake(tmp_path):
    return write_lake(tmp_path / "lake")


@pytest.fixture
def ticker(lake):
    with dg.instance_for_test() as instance:
        yield Ticker(instance, TelemetrySource(lake=str(lake)))


def test_first_tick_diagnoses_the_whole_history_oldest_first(ticker):
    result = ticker.tick()
    # ranker@2 was published 20 h after the start; the others two days before it
    assert ticker.partitions() == {"ranker@1", "ranker@2", "ads@1"}
    assert ticker.launched == HISTORY
    assert result.run_requests[-1].tags["hawkeye/model_id"] == RANKER
    # resolved against the job's partitions, as the daemon resolves them
    assert all(r.tags["dagster/partition"] == r.run_key for r in result.run_requests)
    assert "no new snapshots" in ticker.tick().skip_message and ticker.launched == HISTORY


def test_a_long_history_is_diagnosed_a_burst_per_tick(ticker, lake):
    ticker.tick()
    ids = [f"ranker@old-{i:02d}" for i in range(MAX_PER_TICK + 3)]
    append_snapshots(lake, "old", ids, START - pd.Timedelta("30D"))
    fresh = Ticker(ticker.instance, ticker.telemetry)  # a fresh cursor: the history unread
    sizes = [len(fresh.tick().run_requests) for _ in range(3)]
    assert sizes == [MAX_PER_TICK, 3, 0]
    assert sorted(fresh.launched) == ids       # those launched before are not again


def test_a_new_snapshot_is_diagnosed_once(ticker, lake):
    ticker.tick()
    append_snapshots(lake, "later", ["ranker@3"], START + pd.Timedelta("2D"))
    ticker.tick()
    assert ticker.launched == [*HISTORY, "ranker@3"] and "ranker@3" in ticker.partitions()
    # the same row again in another file, and more ticks: nothing is launched twice
    append_snapshots(lake, "republished", ["ranker@3"], START + pd.Timedelta("2D"))
    for _ in range(3):
        ticker.tick()
    assert ticker.launched == [*HISTORY, "ranker@3"]


def test_a_late_file_older_than_one_read_is_still_read(ticker, lake):
    """A slow publisher's file can become visible after a newer one was read: it has an
    older modification time and an earlier name, and must not be missed."""
    ticker.tick()
    append_snapshots(lake, "z-fast", ["ranker@4"], START + pd.Timedelta("2D"))
    ticker.tick()
    append_snapshots(lake, "a-slow", ["ranker@3"], START + pd.Timedelta("2D"))
    newer = (lake / "snapshots" / "z-fast.parquet").stat().st_mtime_ns
    os.utime(lake / "snapshots" / "a-slow.parquet", ns=(newer - 60 * 10**9,) * 2)
    ticker.tick()
    ticker.tick()
    assert ticker.launched == [*HISTORY, "ranker@4", "ranker@3"]


def test_a_burst_is_spread_over_ticks(ticker, lake):
    ticker.tick()
    burst = [f"ranker@burst-{i:02d}" for i in range(2 * MAX_PER_TICK + 5)]
    append_snapshots(lake, "burst", burst, START + pd.Timedelta("3D"))
    sizes, read = [], []
    for _ in range(4):
        before = len(ticker.launched)
        ticker.tick()
        sizes.append(len(ticker.launched) - before)
        read.append("burst.parquet" in TailCursor.load(ticker.cursor).recent)
    assert sizes == [MAX_PER_TICK, MAX_PER_TICK, 5, 0]
    assert read == [False, False, True, True]  # the file counts as read once all of it is taken
    assert sorted(ticker.launched[len(HISTORY):]) == burst


def test_ids_dagster_cannot_key_are_skipped_not_fatal(ticker, lake):
    ticker.tick()
    append_snapshots(lake, "odd", ["ranker...3", "tab\tbed", "ranker 'ok' é"],
                     START + pd.Timedelta("2D"))
    ticker.tick()
    assert ticker.launched[-1] == "ranker 'ok' é" and "ranker...3" not in ticker.partitions()


def test_cursor_round_trip():
    cursor = TailCursor(1_772_341_200_000_000_000, ["a b.parquet", "model_id=ü/x.parquet"])
    assert TailCursor.load(cursor.dump()) == cursor
    assert TailCursor.load(None) == TailCursor()


def test_training_partitions_follow_the_runs(ticker):
    sensor = Ticker(ticker.instance, ticker.telemetry, training_partition_sensor)
    sensor.tick()
    assert sensor.partitions("training_partition") == {
        f"{d}/{p}" for d in DATASETS.values() for p in TRAIN_PARTITIONS}
    assert "already have partitions" in sensor.tick().skip_message


@pytest.mark.postgres
def test_a_sql_source_is_read_from_its_watermark(lake):
    import sqlalchemy as sa

    from hawkeye_dagster.lake.open import open_lake
    from hawkeye_dagster.lake.to_sql import copy_lake_to_sql

    with postgres_schema() as (url, schema), dg.instance_for_test() as instance:
        scoped = f"{url}?options={quote(f'-csearch_path={schema}')}"
        copy_lake_to_sql(open_lake(lake=str(lake)), scoped)
        ticker = Ticker(instance, TelemetrySource(sql_url=scoped))
        ticker.tick()
        assert ticker.launched == HISTORY
        assert ticker.tick().skip_message
        with sa.create_engine(scoped).begin() as conn:
            conn.execute(sa.text(
                "insert into snapshots (model_id, snapshot_id, published_at, training_run_id, "
                "artifact) values (:m, 'ranker@3', :t, 'run 2', 'artifacts/ranker@3.pt2')"),
                {"m": RANKER, "t": (START + pd.Timedelta("2D")).to_pydatetime()})
        ticker.tick()
        assert ticker.launched == [*HISTORY, "ranker@3"]


def test_a_tick_imports_no_torch(lake):
    code = (
        "import sys, dagster as dg\n"
        "from hawkeye_dagster.resources import TelemetrySource\n"
        "from hawkeye_dagster.sensors.snapshots import snapshot_publication_sensor as s\n"
        "with dg.instance_for_test() as i:\n"
        f"    s(dg.build_sensor_context(instance=i, resources={{'telemetry': "
        f"TelemetrySource(lake={str(lake)!r})}}))\n"
        "print(sorted(m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
