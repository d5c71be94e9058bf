"""Sensors under restarts and bursts: every snapshot and alert handled exactly once.

A "restart" is what a daemon or code-server restart leaves behind: a new sensor context
built from the last stored cursor, a new telemetry reader, empty module caches. Rows and
files are appended to the lake between ticks, as publishers and monitors do.
"""

import json
import time

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lineage_world import write_lake as write_lineage_lake
from lineage_world import write_table

from hawkeye_dagster.assets.partitions import (
    incident_partitions,
    snapshot_partitions,
    training_partition_partitions,
)
from hawkeye_dagster.assets.snapshots import SNAPSHOT_DIAGNOSTICS
from hawkeye_dagster.incidents import INCIDENTS_DIR
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.sensors import feature_alerts
from hawkeye_dagster.sensors.feature_alerts import BURST, feature_alert_sensor
from hawkeye_dagster.sensors.snapshots import MAX_PER_TICK, snapshot_publication_sensor
from lake_factory import RANKER, SNAPSHOTS, START
from lake_factory import write_lake as write_snapshot_lake
from sensor_ticks import store_tick

#: a sanity bound on one tick (the daemon's limit is 60 s); not a timing measurement
TICK_LIMIT_S = 30


# stand-ins for the other domains' assets: the alert sensor targets them by key
@dg.asset(key="upstream_root_cause", partitions_def=incident_partitions, group_name="test")
def upstream_root_cause():
    return None


@dg.asset(key="incident_report", partitions_def=incident_partitions, group_name="test")
def incident_report():
    return None


@dg.asset(key="training_partition_checks", partitions_def=training_partition_partitions,
          group_name="test")
def training_partition_checks():
    return None


class Daemon:
    """Applies sensor results as the Dagster daemon does: dynamic partitions are added,
    the cursor is stored, and a run key already launched is never launched again.
    ``restart()`` forgets everything in memory except the stored cursor. Ticks go through
    ``evaluate_tick`` (run requests resolved against the sensor's target);
    ``test_sensors_daemon.py`` has the daemon itself."""

    def __init__(self, instance: dg.DagsterInstance, sensor, make_resources,
                 definitions: dg.Definitions):
        self.instance, self.sensor, self.make_resources = instance, sensor, make_resources
        self.definitions = definitions
        self.cursor: str | None = None
        self.run_keys: list[str] = []
        self.restart()

    def restart(self) -> None:
        feature_alerts._graphs.clear()
        self.resources = self.make_resources()

    def tick(self, *, commit: bool = True):
        started = time.monotonic()
        with dg.build_sensor_context(instance_ref=self.instance.get_ref(), cursor=self.cursor,
                                     resources=self.resources,
                                     definitions=self.definitions) as context:
            result = self.sensor.evaluate_tick(context)
        assert time.monotonic() - started < TICK_LIMIT_S
        if commit:
            store_tick(self.instance, result, self.sensor)
            self.cursor = result.cursor or self.cursor
            self.run_keys += [r.run_key for r in result.run_requests or []]
        return result


def _publish(lake, name: str, ids: list[str], published) -> None:
    pq.write_table(pa.table({
        "model_id": [RANKER] * len(ids), "snapshot_id": ids,
        "published_at": pa.array(pd.DatetimeIndex(published).as_unit("us"),
                                 pa.timestamp("us", tz="UTC")),
        "training_run_id": ["run 2"] * len(ids),
        "artifact": [f"artifacts/{s}.pt2" for s in ids]}), lake / "snapshots" / f"{name}.parquet")


@pytest.fixture
def snapshot_lake(tmp_path):
    return write_snapshot_lake(tmp_path / "lake", artifacts=False)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def _snapshot_daemon(lake, instance) -> Daemon:
    def resources():
        return {"telemetry": TelemetrySource(lake=str(lake)),
                "storage": HawkeyeStorage(root="never-written")}

    defs = dg.Definitions(assets=SNAPSHOT_DIAGNOSTICS, sensors=[snapshot_publication_sensor],
                          resources=resources())
    return Daemon(instance, snapshot_publication_sensor, resources, defs)


def test_snapshot_stream_with_restarts_diagnoses_each_once(snapshot_lake, instance):
    daemon = _snapshot_daemon(snapshot_lake, instance)
    daemon.tick()
    rng = np.random.default_rng(0)
    published = []
    for batch in range(8):
        ids = [f"ranker@{batch}.{i}" for i in range(rng.integers(1, 2 * MAX_PER_TICK))]
        _publish(snapshot_lake, f"batch-{batch}", ids,
                 [START + pd.Timedelta(days=2, hours=batch)] * len(ids))
        published += ids
        if rng.random() < 0.5:
            daemon.restart()
        if rng.random() < 0.3:  # the daemon died before storing this tick: it is redone
            uncommitted = daemon.tick(commit=False)
            redone = daemon.tick()
            assert [r.run_key for r in redone.run_requests or []] == \
                [r.run_key for r in uncommitted.run_requests or []]
        else:
            daemon.tick()
    while daemon.tick().run_requests:  # catch up with what bursts left for later ticks
        pass
    assert sorted(daemon.run_keys) == sorted([*SNAPSHOTS, *published])
    assert len(set(daemon.run_keys)) == len(daemon.run_keys)


def test_a_tick_killed_between_its_partitions_and_its_runs_is_launched_again(snapshot_lake,
                                                                            instance):
    """Dagster stores a tick's partitions before it reserves the tick's runs: a daemon killed
    in between leaves partitions without runs, and those snapshots are still launched."""
    daemon = _snapshot_daemon(snapshot_lake, instance)
    daemon.tick()
    _publish(snapshot_lake, "late", ["ranker@late"], [START + pd.Timedelta(days=3)])
    cut_short = daemon.tick(commit=False)
    for request in cut_short.dynamic_partitions_requests:           # stored before the kill
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    assert [r.run_key for r in daemon.tick().run_requests] == ["ranker@late"]
    assert not daemon.tick().run_requests                          # then launched, once
    assert sorted(daemon.run_keys) == sorted([*SNAPSHOTS, "ranker@late"])


def test_burst_of_a_thousand_publications_catches_up(snapshot_lake, instance):
    daemon = _snapshot_daemon(snapshot_lake, instance)
    daemon.tick()
    ids = [f"ranker@burst {i:04d}" for i in range(1000)]
    times = START + pd.Timedelta(days=2) + pd.to_timedelta(np.arange(1000), unit="s")
    for f in range(50):  # 50 publishers' files of 20 rows
        _publish(snapshot_lake, f"burst-{f}", ids[f::50], times[f::50])
    ticks = 0
    while daemon.tick().run_requests:
        ticks += 1
    assert ticks == 1000 // MAX_PER_TICK
    assert daemon.run_keys[len(SNAPSHOTS):] == ids  # oldest first
    assert set(instance.get_dynamic_partitions(snapshot_partitions.name)) >= set(ids)


def _alerts(times, features, severity="warning") -> pd.DataFrame:
    return pd.DataFrame({"ts": pd.DatetimeIndex(times), "feature_name": features,
                         "alert_type": "null_rate", "severity": severity, "detail": "test"})


@pytest.fixture
def alert_world(tmp_path, instance):
    lake = tmp_path / "lineage_lake"
    write_lineage_lake(lake)
    out = tmp_path / "out"

    def resources():
        return {"telemetry": TelemetrySource(lake=str(lake)),
                "storage": HawkeyeStorage(root=str(out))}

    defs = dg.Definitions(assets=[upstream_root_cause, incident_report, training_partition_checks],
                          sensors=[feature_alert_sensor], resources=resources())
    return lake, Daemon(instance, feature_alert_sensor, resources, defs), out


def _incident_alerts(out) -> list[tuple[str, str]]:
    """(feature, ts) of every alert recorded in an incident, one entry per recording."""
    return sorted((a["feature_name"], pd.Timestamp(a["ts"]).isoformat())
                  for path in (out / INCIDENTS_DIR).glob("*.json")
                  for a in json.loads(path.read_text())["detail"]["alerts"])


def test_alert_stream_with_restarts_opens_each_incident_once(alert_world):
    lake, daemon, out = alert_world
    daemon.tick()  # nothing yet: the cursor starts at an empty table
    # alerts far enough apart (more than a burst) that each is its own incident
    times = pd.Timestamp("2026-10-11 07:00", tz="UTC") + np.arange(12) * (BURST * 2)
    features = ["f1", "f3", "f2"] * 4
    for i in range(12):
        write_table(_alerts([times[i]], [features[i]]), lake / "feature_alerts", f"a{i:02d}.parquet")
        if i % 3 == 0:
            daemon.restart()
        if i % 4 == 1:
            daemon.tick(commit=False)  # lost tick: redone from the stored cursor
        if i % 2:
            daemon.tick()
    daemon.tick()
    incidents = [k for k in daemon.run_keys if ":" not in k]  # not training-partition checks
    assert len(incidents) == 12 and len(set(daemon.run_keys)) == len(daemon.run_keys)
    assert _incident_alerts(out) == sorted((f, t.isoformat()) for f, t in zip(features, times))
    assert "no new feature alerts" in daemon.tick().skip_message


def test_ten_thousand_alerts_in_one_burst(alert_world):
    lake, daemon, out = alert_world
    daemon.tick()
    rng = np.random.default_rng(1)
    times = pd.Timestamp("2026-10-11", tz="UTC") + pd.to_timedelta(
        np.sort(rng.integers(0, 3 * 86400, 10_000)), unit="s")
    features = rng.choice(["f1", "f2", "f3", "not a feature"], 10_000)
    severity = rng.choice(["info", "warning", "critical"], 10_000)
    frame = _alerts(times, features, "")
    frame["severity"] = severity
    for f in range(100):
        write_table(frame.iloc[f::100], lake / "feature_alerts", f"burst-{f:03d}.parquet")
    result = daemon.tick()
    assert result.run_requests
    investigated = frame[(frame["severity"] != "info") & (frame["feature_name"] != "not a feature")]
    assert len(_incident_alerts(out)) == len(investigated)
    assert "no new feature alerts" in daemon.tick().skip_message
