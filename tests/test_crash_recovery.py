"""``dagster dev`` SIGKILLed in the middle of diagnostics runs, restarted, and nothing is lost.

A real ``dagster dev`` (webserver, daemon, code server, run workers) runs the project's
definitions on a small lake, with the instance configuration the project ships (the demo's
``dagster.yaml`` on SQLite, ``deploy/dagster.yaml`` on PostgreSQL; only the monitor's poll
interval and start timeout are shortened so the test waits seconds, not minutes, and the
automation daemon is off so that the runs sharing the run slots are the ones under test:
snapshot diagnostics and incident reports; the lake's models' latest training runs read no
partition, so an alert launches no training-partition checks). The lake's own snapshots are
diagnosed first; then snapshots are published and critical feature alerts appended as a
stream; at a random moment while
diagnostics runs are in flight the whole process group is SIGKILLed, then ``dagster dev`` is
started again on the same ``DAGSTER_HOME``, :data:`KILLS` times. What must hold once it has
caught up: every snapshot and every alert's incident has exactly one successful run (retries
allowed, and counted), every failed run has a successful retry, no output is half-written,
and the sensors' cursors still parse and never launched a run key twice. The last test restarts
the webserver alone while ``dagster-daemon`` runs on.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from dagster._core.storage.tags import PARTITION_NAME_TAG

import dagster_process
from hawkeye_dagster.atomic import TEMP_PREFIX, write_atomically
from hawkeye_dagster.demo import DAGSTER_YAML
from hawkeye_dagster.incidents import INCIDENTS_DIR
from lake_factory import ADS, PG_URL, RANKER, START, TS, lake_tables, postgres_schema, write_lake

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "dagster.yaml"
KILLS = 3
#: the monitor's poll interval and start timeout in this test (shipped: 30-60 s and 180-300 s)
POLL_S, START_TIMEOUT_S = 5, 120
CATCH_UP_S = 420
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
ALERT_FEATURE = "größe"


@dataclass
class Trial:
    """What one kill and restart did."""

    published: int
    alerted: int
    in_flight: int
    caught_up_s: float = 0.0
    diagnosed: int = 0
    retries: int = 0


class World:
    """The lake, where a publisher adds snapshots and alerts, and the outputs to inspect."""

    def __init__(self, root: Path):
        self.root = root
        tables = lake_tables()
        # the lake's own alert stays history (info): the incidents are the stream's
        tables["feature_alerts"] = tables["feature_alerts"].set_column(
            3, "severity", pa.array(["info"]))
        # each model's latest training run read no partition: an alert's runs are its incident's
        runs = tables["training_runs"]
        later = pa.table({"training_run_id": ["run 3", "run-ads 2"], "model_id": [RANKER, ADS],
                          "dataset_id": ["feed data", "ads data"],
                          "partitions": pa.array([[], []], pa.list_(pa.string())),
                          "started_at": pa.array([START, START], TS),
                          "finished_at": pa.array([START, START], TS)}).cast(runs.schema)
        tables["training_runs"] = pa.concat_tables([runs, later])
        self.lake = write_lake(root / "lake", tables)
        self.storage = root / "out"
        self.history = tables["snapshots"]["snapshot_id"].to_pylist()   # diagnosed first
        self.snapshots: list[str] = []
        self.alerts = 0
        self._models = [(RANKER, "run 2", (self.lake / "artifacts/ranker@2.pt2").read_bytes()),
                        (ADS, "run-ads", (self.lake / "artifacts/ads@1.pt2").read_bytes())]

    def publish(self) -> str:
        """A new snapshot of each model in turn: its artifact first, then its row, each file
        atomically."""
        model_id, run, program = self._models[len(self.snapshots) % 2]
        snapshot_id = f"crash-{len(self.snapshots)}"
        artifact = f"artifacts/{snapshot_id}.pt2"
        write_atomically(self.lake / artifact, program)
        row = pa.table({"model_id": [model_id], "snapshot_id": [snapshot_id],
                        "published_at": pa.array([pd.Timestamp.now(tz="UTC")], TS),
                        "training_run_id": [run], "artifact": [artifact]})
        self._write(row, "snapshots", snapshot_id)
        self.snapshots.append(snapshot_id)
        return snapshot_id

    def alert(self) -> None:
        """A critical alert on a feature, 10 h after the last (more than a burst apart): each
        one its own incident, all within the lake's served hours."""
        ts = START + pd.Timedelta(hours=20 + 10 * self.alerts)
        row = pa.table({"ts": pa.array([ts], TS), "feature_name": [ALERT_FEATURE],
                        "alert_type": ["null_rate"], "severity": ["critical"],
                        "detail": [f"crash test alert {self.alerts}"]})
        self._write(row, "feature_alerts", f"alert-{self.alerts}")
        self.alerts += 1

    def _write(self, table: pa.Table, name: str, stem: str) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_atomically(self.lake / name / f"{stem}.parquet", sink.getvalue().to_pybytes())

    def incidents(self) -> set[str]:
        """The incidents the alert sensor opened."""
        return {p.stem for p in (self.storage / INCIDENTS_DIR).glob("*.json")
                if json.loads(p.read_text())["opened_by"] == "feature_alert_sensor"}


def _instance_yaml(base: str) -> str:
    config = yaml.safe_load(base)
    config["run_monitoring"] |= {"poll_interval_seconds": POLL_S,
                                 "start_timeout_seconds": START_TIMEOUT_S}
    config["auto_materialize"] = {"enabled": False, "use_sensors": False}
    return yaml.safe_dump(config)


@contextmanager
def _sqlite_home(root: Path):
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(_instance_yaml(DAGSTER_YAML))
    yield home, {}


@contextmanager
def _postgres_home(root: Path):
    url = urlsplit(PG_URL.replace("+psycopg2", ""))
    with postgres_schema() as (_, schema):
        home = root / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(_instance_yaml(DEPLOY.read_text()))
        yield home, {"DAGSTER_PG_HOST": url.hostname, "DAGSTER_PG_PORT": str(url.port or 5432),
                     "DAGSTER_PG_USER": url.username, "DAGSTER_PG_PASSWORD": url.password or "",
                     "DAGSTER_PG_DB": url.path.lstrip("/"),
                     "PGOPTIONS": f"-csearch_path={schema}"}


class Dev:
    """``dagster dev`` on the world's lake and one ``DAGSTER_HOME``, started again and again."""

    def __init__(self, world: World, home: Path):
        """The environment is the test's (a PostgreSQL instance's ``DAGSTER_PG_*`` in it)."""
        self.world, self.home = world, home
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HAWKEYE_", "DAGSTER_"))}
        self.env = {**env, **{k: v for k, v in os.environ.items() if k.startswith("DAGSTER_PG_")},
                    "DAGSTER_HOME": str(home),
                    "HAWKEYE_LAKE": str(world.lake), "HAWKEYE_STORAGE": str(world.storage),
                    "HAWKEYE_HOME": str(world.root / "home")}
        self.process = None
        self.starts = 0

    def start(self) -> None:
        port = dagster_process.free_port()
        self.starts += 1
        self.process = dagster_process.start(
            [sys.executable, "-m", "dagster", "dev", "-p", str(port),
             "-m", "hawkeye_dagster.definitions"],
            env=self.env, cwd=REPO, log=self.world.root / f"dev-{self.starts}.log")
        dagster_process.wait_until_serving(port, self.process)

    def kill(self) -> None:
        """SIGKILL to the process group, as a crash; whatever it started outside it too."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        for pid in dagster_process.session_processes(self.process.pid):
            os.kill(pid, signal.SIGKILL)
        assert dagster_process.left_after(self.process.pid, 10) == []

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            dagster_process.stop(self.process)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))


def _target_runs(instance: dg.DagsterInstance, world: World) -> list:
    """Runs of the snapshot diagnostics and of the alert incidents' reports."""
    incidents = world.incidents()
    runs = []
    for record in instance.get_run_records():
        run = record.dagster_run
        partition = run.tags.get(PARTITION_NAME_TAG)
        selected = run.asset_selection or set()
        if run.job_name == "snapshot_diagnostics" or (
                partition in incidents and dg.AssetKey("incident_report") in selected):
            runs.append(run)
    return runs


def _diagnosed(runs) -> Counter:
    return Counter(r.tags[PARTITION_NAME_TAG] for r in runs if r.status.value == "SUCCESS")


def _wanted(world: World) -> set[str]:
    return set(world.history) | set(world.snapshots) | world.incidents()


def _wait_caught_up(dev: Dev, world: World, alerts: int) -> float:
    """Seconds until every published id has a successful run and nothing of ours is in flight."""
    started = time.monotonic()
    while time.monotonic() - started < CATCH_UP_S:
        with dev.instance() as instance:
            runs = _target_runs(instance, world)
        if len(world.incidents()) >= alerts and _wanted(world) <= set(_diagnosed(runs)) and \
                all(r.status.value in FINISHED for r in runs):
            return time.monotonic() - started
        assert dev.process.poll() is None, "dagster dev exited"
        time.sleep(2)
    raise AssertionError(f"not caught up after {CATCH_UP_S} s: wanted {sorted(_wanted(world))}, "
                         f"runs {[(r.tags.get(PARTITION_NAME_TAG), r.status.value) for r in runs]}")


def _kill_during_runs(dev: Dev, world: World, rng: random.Random) -> int:
    """SIGKILL at a random moment while at least one of our runs is in flight; how many were."""
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline:
        with dev.instance() as instance:
            running = [r for r in _target_runs(instance, world) if r.status.value == "STARTED"]
        if running:
            time.sleep(rng.uniform(0, 3))
            with dev.instance() as instance:
                in_flight = [r for r in _target_runs(instance, world)
                             if r.status.value not in FINISHED]
            dev.kill()
            return len(in_flight)
        time.sleep(0.5)
    raise AssertionError("no diagnostics run started")


def _assert_whole(storage: Path) -> None:
    """Every output reads back whole (JSON, Parquet, PNG); temporary files are hidden."""
    for path in storage.rglob("*"):
        if not path.is_file() or path.name.startswith(TEMP_PREFIX):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 100


def _assert_cursors_intact(instance: dg.DagsterInstance) -> None:
    """Each sensor's cursor parses and no run key was launched twice (retries aside)."""
    for state in instance.all_instigator_state():
        cursor = getattr(state.instigator_data, "cursor", None)
        if cursor and state.name in ("snapshot_publication_sensor", "feature_alert_sensor"):
            json.loads(cursor)
    keys = Counter(r.tags["dagster/run_key"] for r in instance.get_runs()
                   if "dagster/run_key" in r.tags and "dagster/retry_number" not in r.tags)
    assert keys and max(keys.values()) == 1, keys.most_common(3)


@pytest.mark.parametrize("storage", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_nothing_is_lost_when_dagster_dev_is_killed_mid_run(storage, tmp_path, monkeypatch):
    world, rng = World(tmp_path), random.Random(18)
    home_of = _sqlite_home if storage == "sqlite" else _postgres_home
    trials: list[Trial] = []
    with home_of(tmp_path) as (home, env):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        dev = Dev(world, home)
        try:
            dev.start()
            for _ in range(KILLS):
                world.publish()
                world.alert()
                in_flight = _kill_during_runs(dev, world, rng)
                trial = Trial(len(world.snapshots), world.alerts, in_flight)
                world.publish()                    # published while Dagster is down
                dev.start()
                trial.caught_up_s = _wait_caught_up(dev, world, world.alerts)
                with dev.instance() as instance:
                    runs = _target_runs(instance, world)
                trial.diagnosed, trial.retries = len(_diagnosed(runs)), _retries(runs)
                trials.append(trial)
            with dev.instance() as instance:
                runs = _target_runs(instance, world)
                _assert_cursors_intact(instance)
        finally:
            dev.stop()
    _report(storage, world, trials, runs)

    diagnosed = _diagnosed(runs)
    assert set(diagnosed) == _wanted(world) and set(diagnosed.values()) == {1}, diagnosed
    assert len(world.incidents()) == world.alerts == KILLS
    by_id: dict[str, list] = {}
    for run in runs:
        by_id.setdefault(run.tags[PARTITION_NAME_TAG], []).append(run)
    for partition, attempts in by_id.items():
        statuses = [r.status.value for r in attempts]
        assert "SUCCESS" in statuses, (partition, statuses)       # every failure retried
        retried = [r for r in attempts if "dagster/retry_number" in r.tags]
        assert len(retried) <= 2, (partition, statuses)           # within the bound
    _assert_whole(world.storage)


def _retries(runs) -> int:
    return sum("dagster/retry_number" in r.tags for r in runs)


def _report(storage: str, world: World, trials: list[Trial], runs) -> None:
    """The README's reliability rows: per kill, what was published before it, what was in
    flight, how long the restarted instance took to diagnose everything, retries so far."""
    failed = sum(r.status.value == "FAILURE" for r in runs)
    print(f"\n[{storage}] ids diagnosed {len(_diagnosed(runs))}, runs {len(runs)}, "
          f"failed by the crashes {failed}, retries {_retries(runs)}")
    for i, t in enumerate(trials, 1):
        print(f"| {storage} | {i} | {t.published} + {t.alerted} | {t.in_flight} | "
              f"{t.diagnosed} of {len(world.history) + t.published + 1 + t.alerted} | "
              f"{t.caught_up_s:.0f} | "
              f"{t.retries} |")


def _sensor_ticks(instance: dg.DagsterInstance, name: str) -> list[float]:
    [state] = [s for s in instance.all_instigator_state() if s.name == name]
    return sorted(t.timestamp for t in instance.get_ticks(state.instigator_origin_id,
                                                          state.selector_id))


def test_the_daemon_keeps_ticking_and_launching_while_the_webserver_restarts(tmp_path):
    """``dagster-daemon`` and ``dagster-webserver`` as separate processes on one instance: the
    webserver is SIGKILLed, a snapshot is published while it is down, and the daemon's sensor
    ticks on and launches its diagnostics; the restarted webserver serves the same instance."""
    world = World(tmp_path)
    with _sqlite_home(tmp_path) as (home, _):
        dev = Dev(world, home)
        # the storages are created here, once: a daemon and a webserver starting together on a
        # new SQLite home both stamp its schedule database's alembic version, and the next
        # process to open it finds two heads and exits (seen under load)
        with dev.instance():
            pass
        code = ["-m", "hawkeye_dagster.definitions"]
        daemon = dagster_process.start([sys.executable, "-m", "dagster._daemon", "run", *code],
                                       env=dev.env, cwd=REPO, log=tmp_path / "daemon.log")
        port = dagster_process.free_port()
        webserver = [sys.executable, "-m", "dagster_webserver", *code, "-p", str(port)]
        dev.process = dagster_process.start(webserver, env=dev.env, cwd=REPO,
                                            log=tmp_path / "webserver-1.log")
        try:
            dagster_process.wait_until_serving(port, dev.process)
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
            dev.kill()
            down = time.time()
            during = world.publish()
            time.sleep(40)                                  # more than two sensor intervals
            up = time.time()
            dev.process = dagster_process.start(webserver, env=dev.env, cwd=REPO,
                                                log=tmp_path / "webserver-2.log")
            dagster_process.wait_until_serving(port, dev.process)
            _wait_caught_up(dev, world, alerts=0)
            assert daemon.poll() is None
            with dev.instance() as instance:
                ticks = _sensor_ticks(instance, "snapshot_publication_sensor")
                [run] = [r for r in instance.get_run_records()
                         if r.dagster_run.tags.get(PARTITION_NAME_TAG) == during]
        finally:
            dev.stop()
            dagster_process.stop(daemon)
    assert sum(down <= t <= up for t in ticks) >= 2
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 45      # no tick skipped
    assert down <= run.create_timestamp.timestamp() <= up          # launched while it was down
    assert run.dagster_run.status.value == "SUCCESS"
