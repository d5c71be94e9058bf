"""The sensors as Dagster's daemon runs them, not as functions called by a test.

``hawkeye_dagster.definitions`` is loaded as a code location in a gRPC code server of its own
(the environment selects the lake, as under ``dagster dev``), every running sensor is
evaluated by the sensor daemon's own iteration (``execute_sensor_iteration``), and the runs
it requests are submitted to a queued coordinator, then launched one at a time (SQLite
storage has one writer) by the queued-run daemon with the default run launcher, each in a
process of its own. A frozen clock moves each tick past every sensor's minimum interval. The
last test stops ``hawkeye-dagster demo`` as a user does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.remote_representation.external import RemoteSensor
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from dagster._daemon.sensor import execute_sensor_iteration
from lineage_world import write_table

import dagster_process
from hawkeye_dagster.assets.lineage import UPSTREAM_FILE
from hawkeye_dagster.incidents import INCIDENTS_DIR, REPORTS_DIR
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.sensors.topline import MIN_HISTORY, SCAN, STEP, scan_ends

REPO = Path(__file__).resolve().parents[1]
LOCATION = "hawkeye"
#: the instance: runs queued and launched one at a time
INSTANCE = {"run_coordinator": {"module": "dagster._core.run_coordinator",
                                "class": "QueuedRunCoordinator"},
            "concurrency": {"runs": {"max_concurrent_runs": 1}}}
#: more than every sensor's minimum interval
TICK_EVERY_S = 3600
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
SENSORS = {"model_registry_sensor", "feature_alert_sensor", "auto_pause_sensor",
           "snapshot_publication_sensor", "training_partition_sensor", "topline_anomaly_sensor"}


class Daemon:
    """The sensor and queued-run daemons of one instance and workspace, iterated by hand."""

    def __init__(self, instance: dg.DagsterInstance, workspace, storage: Path):
        self.instance, self.workspace, self.storage = instance, workspace, storage
        self.clock = time.time()
        self.logger = logging.getLogger("hawkeye.test.daemon")

    @property
    def sensors(self) -> dict[str, RemoteSensor]:
        """The location's sensors that the sensor daemon evaluates (not automation ones)."""
        location = self.workspace.create_request_context().get_code_location(LOCATION)
        return {s.name: s for repo in location.get_repositories().values()
                for s in repo.get_sensors() if not s.sensor_type.is_handled_by_asset_daemon}

    def stop(self, *names: str) -> None:
        for name in names:
            sensor = self.sensors[name]
            self.instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)

    def tick(self) -> list[DagsterRun]:
        """One iteration of the sensor daemon over every running sensor; the runs it submitted."""
        before = {run.run_id for run in self.instance.get_runs()}
        self.clock += TICK_EVERY_S
        with freeze_time(self.clock):
            list(execute_sensor_iteration(self.workspace, self.logger, threadpool_executor=None,
                                          submit_threadpool_executor=None))
        return [run for run in self.instance.get_runs() if run.run_id not in before][::-1]

    def run(self, runs: list[DagsterRun], timeout: float = 300) -> dict[str, str]:
        """Launch queued runs, in queue order and one at a time, until ``runs`` have finished;
        their statuses by run key."""
        deadline = time.monotonic() + timeout
        with QueuedRunCoordinatorDaemon(interval_seconds=1) as queue:
            while time.monotonic() < deadline:
                latest = [self.instance.get_run_by_id(run.run_id) for run in runs]
                if all(run.status.value in FINISHED for run in latest):
                    return {run.tags["dagster/run_key"]: run.status.value for run in latest}
                list(queue.run_iteration(self.workspace))
                time.sleep(1)
        raise AssertionError(f"runs still unfinished after {timeout} s: {latest}")

    def tick_statuses(self) -> dict[str, Counter]:
        """Per sensor, how many of its ticks ended in each status."""
        return {name: Counter(t.status.value for t in self.instance.get_ticks(
                    sensor.get_remote_origin_id(), sensor.selector_id))
                for name, sensor in self.sensors.items()}

    def incident(self, incident_id: str) -> dict:
        return json.loads((self.storage / INCIDENTS_DIR / f"{incident_id}.json").read_text())


@pytest.fixture
def daemon_for(tmp_path, monkeypatch):
    """``daemon_for(lake)``: a fresh instance and the project's code location on ``lake``."""
    with ExitStack() as stack:
        def start(lake: Path) -> Daemon:
            for name in ("HAWKEYE_SQL_URL", "HAWKEYE_AUTO_PAUSE", "HAWKEYE_DAGSTER_URL",
                         "HAWKEYE_AIRFLOW_URL", "HAWKEYE_AUDIT_URL"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("HAWKEYE_LAKE", str(lake))
            monkeypatch.setenv("HAWKEYE_HOME", str(tmp_path / "home"))
            monkeypatch.setenv("HAWKEYE_STORAGE", str(tmp_path / "out"))
            home = tmp_path / "dagster_home"
            home.mkdir()
            instance = stack.enter_context(
                dg.instance_for_test(overrides=INSTANCE, temp_dir=str(home)))
            workspace = stack.enter_context(create_test_daemon_workspace_context(
                ModuleTarget("hawkeye_dagster.definitions", None, str(REPO), LOCATION),
                instance))
            return Daemon(instance, workspace, tmp_path / "out")

        yield start


def _no_failed_tick(daemon: Daemon) -> None:
    statuses = daemon.tick_statuses()
    failed = {n: c for n, c in statuses.items() if c["FAILURE"]}
    assert not failed, failed


def test_the_top_line_history_is_scanned_a_step_at_a_time_then_live():
    first = pd.Timestamp("2026-10-01", tz="UTC")
    newest = first + pd.Timedelta("10D5h")
    ends = scan_ends(None, first, newest)          # a fresh start: from the first full stretch
    assert ends[0] == first + MIN_HISTORY + SCAN and ends[-1] == newest
    assert set(pd.Series(ends[:-1]).diff().dropna()) == {STEP}
    assert scan_ends(ends[-2], first, newest) == [newest]
    assert scan_ends(newest, first, newest + pd.Timedelta("1h")) == [newest + pd.Timedelta("1h")]
    assert scan_ends(None, first, first + MIN_HISTORY) == []   # too little history yet


@pytest.mark.slow
def test_an_appended_feature_alert_is_triaged_end_to_end(simulated, daemon_for, tmp_path):
    """An alert row appended to the lake's ``feature_alerts`` becomes an incident partition
    and runs of ``upstream_root_cause`` + ``incident_report`` and of the training-partition
    checks; they succeed and the report names the truth's root cause."""
    source, truth = simulated("feature_alert_early")
    [expected] = truth["incidents"]
    lake = tmp_path / "lake"
    shutil.copytree(source, lake)
    alerts = open_lake(str(source)).read("feature_alerts")
    arrival = pd.Timestamp(expected["entry"]["ts"])
    shutil.rmtree(lake / "feature_alerts")
    write_table(alerts[alerts["ts"] < arrival], lake / "feature_alerts")
    daemon = daemon_for(lake)
    # their own history would fill the queue; the next test has them
    daemon.stop("snapshot_publication_sensor", "topline_anomaly_sensor")

    assert daemon.tick() == []                               # the history: an info alert
    write_table(alerts[alerts["ts"] >= arrival], lake / "feature_alerts", "late.parquet")
    runs = daemon.tick()
    opened = {r.tags["dagster/partition"]: r for r in runs
              if r.tags.get("hawkeye/entry") == "feature_alert"}
    incident_id = next(i for i in opened
                       if daemon.incident(i)["entry"]["feature"] == expected["entry"]["feature"])
    assert incident_id in daemon.instance.get_dynamic_partitions("incident")
    run = opened[incident_id]
    assert run.asset_selection == {dg.AssetKey("upstream_root_cause"),
                                   dg.AssetKey("incident_report")}
    checks = [r for r in runs if r.tags["dagster/run_key"].startswith(f"{incident_id}:")]
    assert checks and all(r.asset_selection == {dg.AssetKey("training_partition_checks")}
                          for r in checks)

    started = time.monotonic()
    statuses = daemon.run([run, checks[0]])
    print(f"\nincident run + one training-partition check run: {time.monotonic() - started:.1f} s")
    assert set(statuses.values()) == {"SUCCESS"}
    report = json.loads((daemon.storage / REPORTS_DIR / f"{incident_id}.json").read_text())
    assert report["root_causes"][0]["id"] == expected["root_cause"]["id"]
    assert (daemon.storage / INCIDENTS_DIR / incident_id / UPSTREAM_FILE).exists()

    written = {p: p.stat().st_mtime_ns for p in (daemon.storage / INCIDENTS_DIR).glob("*.json")}
    assert daemon.tick() == []                               # nothing new: nothing again
    assert {p: p.stat().st_mtime_ns for p in written} == written   # incidents written once
    pause = daemon.sensors["auto_pause_sensor"]
    [last] = daemon.instance.get_ticks(pause.get_remote_origin_id(), pause.selector_id, limit=1)
    assert last.status == TickStatus.SKIPPED and "automatic pausing is off" in last.skip_reason
    _no_failed_tick(daemon)


@pytest.mark.slow
def test_a_fresh_instance_diagnoses_every_snapshot_and_opens_every_incident(simulated,
                                                                            daemon_for):
    """On the demo lake, from a fresh instance: a diagnostics run for every published snapshot
    (the known-bad ones included), an incident for every top-line degradation of the ground
    truth and for the critical feature alert, no run key ever submitted twice, and the
    incidents first in the queue."""
    lake, truth = simulated("demo")
    daemon = daemon_for(lake)
    started, quiet = time.monotonic(), 0
    for _ in range(8):
        quiet = 0 if daemon.tick() else quiet + 1
        if quiet == 2:
            break
    print(f"\ncaught up with the demo's history in {time.monotonic() - started:.1f} s")
    assert quiet == 2, "the sensors were still requesting runs after 8 ticks"
    runs = daemon.instance.get_runs()
    keys = Counter(run.tags["dagster/run_key"] for run in runs)
    assert max(keys.values()) == 1

    published = open_lake(str(lake)).read("snapshots")["snapshot_id"]
    diagnosed = [r.tags["dagster/partition"] for r in runs if r.job_name == "snapshot_diagnostics"]
    assert sorted(diagnosed) == sorted(published)
    assert {"feed_explore-v3", "mp_value-v3"} <= set(diagnosed)

    opened = [daemon.incident(r.tags["dagster/partition"]) for r in runs
              if r.job_name == "incident_report_job"]
    for incident in (i for i in truth["incidents"] if i["entry"]["kind"] == "topline"):
        onset = pd.Timestamp(incident["onset"])
        assert any(o["entry"]["product"] == incident["entry"]["product"]
                   and o["entry"]["segment"] == incident["entry"]["segment"]
                   and pd.Timestamp(o["start"]) <= onset
                   and (o["end"] is None or onset < pd.Timestamp(o["end"]))
                   for o in opened), incident["name"]
    critical = open_lake(str(lake)).read("feature_alerts").query("severity == 'critical'")
    alerted = {daemon.incident(r.tags["dagster/partition"])["entry"]["feature"] for r in runs
               if r.tags.get("hawkeye/entry") == "feature_alert"}
    assert set(critical["feature_name"]) <= alerted

    # the queued-run daemon's own order: every incident before the history's diagnoses
    queued = daemon.instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
    order = [run.job_name for run in QueuedRunCoordinatorDaemon(
        interval_seconds=1)._priority_sort(queued[::-1])]
    assert "incident_report_job" in order and "snapshot_diagnostics" in order
    assert max(i for i, job in enumerate(order) if job == "incident_report_job") < \
        min(i for i, job in enumerate(order) if job == "snapshot_diagnostics")

    statuses = daemon.tick_statuses()
    assert SENSORS <= set(statuses)
    assert all(sum(c.values()) for c in statuses.values()), statuses   # every sensor ticked
    _no_failed_tick(daemon)


@pytest.mark.slow
def test_demo_stops_on_sigterm_within_ten_seconds_leaving_no_process(simulated, tmp_path):
    lake, _ = simulated("demo")
    demo, port = dagster_process.start_demo(lake, tmp_path, REPO)
    try:
        dagster_process.wait_until_serving(port, demo)
        [dev] = dagster_process.children(demo.pid)
        assert os.getpgid(dev) == dev != os.getpgid(demo.pid)   # dagster dev: a group of its own
        environ = Path(f"/proc/{dev}/environ").read_bytes().split(b"\0")
        assert f"HAWKEYE_DAGSTER_URL=http://localhost:{port}".encode() in environ
        assert len(dagster_process.session_processes(demo.pid)) > 3  # webserver, daemon, ...

        sent = time.monotonic()
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
        stopped = time.monotonic() - sent
        print(f"\ndemo stopped {stopped:.1f} s after SIGTERM")
        assert demo.returncode == 0 and stopped < 10
        assert dagster_process.left_after(demo.pid, 1) == []
    finally:
        dagster_process.stop(demo)
