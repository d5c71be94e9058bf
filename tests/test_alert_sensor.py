"""The feature-alert sensor, evaluated through Dagster's sensor testing API on a real instance.

Each tick goes through ``SensorDefinition.evaluate_tick``, which resolves the run requests
against the sensor's target as the daemon does (a bare call of the sensor function does not);
``test_sensors_daemon.py`` runs it under the daemon itself."""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import pytest
from lineage_world import utc, write_lake, write_table

from hawkeye_dagster.assets.lineage import UPSTREAM_FILE, upstream_root_cause
from hawkeye_dagster.assets.partitions import incident_partitions, training_partition_partitions
from hawkeye_dagster.incidents import INCIDENTS_DIR
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.sensors import feature_alerts
from hawkeye_dagster.sensors.feature_alerts import (
    HEALTH_ALERTS_DIR,
    AlertCursor,
    feature_alert_sensor,
)


# test doubles of the other domains' assets: only their keys and partitions matter here
@dg.asset(key="incident_report", partitions_def=incident_partitions, group_name="test")
def incident_report():
    return None


@dg.asset(key="training_partition_checks", partitions_def=training_partition_partitions,
          group_name="test")
def training_partition_checks():
    return None


def _alerts(*rows):
    return pd.DataFrame([{"ts": utc(ts), "feature_name": f, "alert_type": "null_rate",
                          "severity": severity, "detail": "test"} for ts, f, severity in rows])


@pytest.fixture
def lake(tmp_path):
    write_lake(tmp_path / "lake")
    return tmp_path / "lake"


@pytest.fixture
def env(lake, tmp_path):
    feature_alerts._graphs.clear()
    resources = {"telemetry": TelemetrySource(lake=str(lake)),
                 "storage": HawkeyeStorage(root=str(tmp_path / "out"))}
    defs = dg.Definitions(assets=[upstream_root_cause, incident_report, training_partition_checks],
                          sensors=[feature_alert_sensor], resources=resources)
    with dg.instance_for_test() as instance:
        yield lake, defs, instance, resources


def _tick(defs, instance, cursor=None):
    with dg.build_sensor_context(instance_ref=instance.get_ref(), cursor=cursor,
                                 definitions=defs, resources=defs.resources) as context:
        result = feature_alert_sensor.evaluate_tick(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def _incident_runs(result) -> list[dg.RunRequest]:
    return [r for r in result.run_requests if dg.AssetKey("incident_report") in r.asset_selection]


def test_a_burst_becomes_one_incident_and_runs_once(env):
    lake, defs, instance, resources = env
    write_table(_alerts(("2026-10-11 07:00", "f1", "warning"), ("2026-10-11 08:00", "f2", "critical"),
                   ("2026-10-11 07:30", "f3", "warning"), ("2026-10-11 06:00", "f1", "info"),
                   ("2026-10-11 07:00", "nowhere", "critical")), lake / "feature_alerts")
    first = _tick(defs, instance)

    incidents = instance.get_dynamic_partitions(incident_partitions.name)
    assert len(incidents) == 2                               # f1+f2 share x1/t1/s1; f3 apart
    specs = {i: json.loads((resources["storage"].path(INCIDENTS_DIR, f"{i}.json")).read_text())
             for i in incidents}
    features = sorted(tuple(sorted(s["entry"]["features"])) for s in specs.values())
    assert features == [("f1", "f2"), ("f3",)]
    burst = next(s for s in specs.values() if "f2" in s["entry"]["features"])
    assert burst["entry"] == {"kind": "feature_alert", "feature": "f1", "features": {
        "f1": "2026-10-11T07:00:00+00:00",                   # the earlier info alert is ignored
        "f2": "2026-10-11T08:00:00+00:00"}}
    assert len(burst["detail"]["alerts"]) == 2
    assert burst["end"] == "2026-10-11T09:00:00+00:00"

    incident_runs = _incident_runs(first)
    assert sorted(r.run_key for r in incident_runs) == sorted(incidents)
    assert all(set(r.asset_selection) == {dg.AssetKey("upstream_root_cause"),
                                          dg.AssetKey("incident_report")} for r in incident_runs)
    training = sorted(r.partition_key for r in first.run_requests if r not in incident_runs)
    assert training == ["d1/2026-10-08", "d1/2026-10-09", "d2/2026-10-07"]   # latest runs only
    assert set(instance.get_dynamic_partitions(training_partition_partitions.name)) == set(training)

    assert {r.job_name for r in first.run_requests} == {"__ASSET_JOB"}

    again = _tick(defs, instance, first.cursor)
    assert not again.run_requests and "no new feature alerts" in again.skip_message
    # the same alerts read again (a lost cursor) give the same run keys: Dagster runs them once,
    # and the incident files are not written again
    written = {p: p.stat().st_mtime_ns for p in resources["storage"].path(INCIDENTS_DIR, "x")
               .parent.glob("*.json")}
    assert {r.run_key for r in _tick(defs, instance).run_requests} == {
        r.run_key for r in first.run_requests}
    assert {p: p.stat().st_mtime_ns for p in written} == written


def test_later_alerts_join_an_open_incident_or_open_a_new_one(env):
    lake, defs, instance, _ = env
    write_table(_alerts(("2026-10-11 07:00", "f1", "warning")), lake / "feature_alerts", "a.parquet")
    first = _tick(defs, instance)
    cursor = first.cursor

    feature_alerts._graphs.clear()                          # a restarted code server
    write_table(_alerts(("2026-10-11 09:00", "f2", "warning")), lake / "feature_alerts", "b.parquet")
    joined = _tick(defs, instance, cursor)
    assert not joined.run_requests and "joined open incidents" in joined.skip_message

    write_table(_alerts(("2026-10-13 09:00", "f2", "critical")), lake / "feature_alerts", "c.parquet")
    later = _tick(defs, instance, joined.cursor)
    opened = _incident_runs(later)
    assert len(opened) == 1 and opened[0].run_key not in {r.run_key for r in first.run_requests}
    assert len(instance.get_dynamic_partitions(incident_partitions.name)) == 2
    assert AlertCursor.parse(later.cursor).tails["lake"]["recent"] == [  # near the watermark
        "a.parquet", "b.parquet", "c.parquet"]


def test_the_first_tick_is_not_fooled_by_info_alerts_after_an_incident(env):
    """History is what precedes the newest alert worth investigating, not the newest alert."""
    lake, defs, instance, _ = env
    write_table(_alerts(("2026-10-11 07:00", "f1", "critical"), ("2026-10-01 07:00", "f2", "warning"),
                        ("2026-10-16 07:00", "f3", "info")), lake / "feature_alerts")
    [request] = _incident_runs(_tick(defs, instance))
    assert request.partition_key in instance.get_dynamic_partitions(incident_partitions.name)
    assert len(instance.get_dynamic_partitions(incident_partitions.name)) == 1  # f2 is history


def test_failed_health_checks_under_storage_are_alerts_too(env):
    _, defs, instance, resources = env
    write_table(_alerts(("2026-10-11 07:00", "f3", "critical")),
           resources["storage"].path(HEALTH_ALERTS_DIR, "x").parent, "check-1.parquet")
    result = _tick(defs, instance)
    assert len(instance.get_dynamic_partitions(incident_partitions.name)) == 1
    assert any(r.partition_key == "d2/2026-10-07" for r in result.run_requests)


def test_nothing_new_is_a_skip(env):
    _, defs, instance, _ = env
    result = _tick(defs, instance)
    assert not result.run_requests
    assert "no new feature alerts" in result.skip_message


def test_the_launched_upstream_analysis_finds_the_source(env):
    lake, defs, instance, resources = env
    write_table(_alerts(("2026-10-11 07:00", "f1", "warning"), ("2026-10-11 07:30", "f2", "warning")),
           lake / "feature_alerts")
    [request] = _incident_runs(_tick(defs, instance))
    result = dg.materialize([upstream_root_cause], partition_key=request.partition_key,
                            instance=instance, resources=resources)
    assert result.success
    upstream = resources["storage"].read_json(INCIDENTS_DIR, request.partition_key, UPSTREAM_FILE)
    assert upstream["cause_node"] == "s1"
    assert upstream["root_causes"][0]["kind"] == "lineage_node"
    assert upstream["paths"]["s1"]["f1"] == ["s1", "t1", "x1", "nf1"]
    metadata = result.asset_materializations_for_node("upstream_root_cause")[0].metadata
    assert metadata["cause"].value == "s1" and metadata["confidence"].value > 0.9


def test_a_sql_lake_is_read_past_a_ts_watermark(lake, tmp_path):
    import sqlalchemy as sa

    from hawkeye_dagster.lake.open import open_lake
    from hawkeye_dagster.lake.to_sql import copy_lake_to_sql

    write_table(_alerts(("2026-10-11 07:00", "f1", "warning")), lake / "feature_alerts")
    url = f"sqlite:///{tmp_path / 'lake.db'}"
    copy_lake_to_sql(open_lake(str(lake)), url)
    feature_alerts._graphs.clear()
    resources = {"telemetry": TelemetrySource(sql_url=url),
                 "storage": HawkeyeStorage(root=str(tmp_path / "out"))}
    defs = dg.Definitions(assets=[upstream_root_cause, incident_report, training_partition_checks],
                          sensors=[feature_alert_sensor], resources=resources)
    with dg.instance_for_test() as instance:
        first = _tick(defs, instance)
        assert len(_incident_runs(first)) == 1
        watermark = AlertCursor.parse(first.cursor).tails["lake"]["mark"]
        assert watermark == utc("2026-10-11 07:00").value
        again = _tick(defs, instance, first.cursor)        # the row at the watermark: seen
        assert not again.run_requests and "no new feature alerts" in again.skip_message

        engine = sa.create_engine(url)
        table = sa.Table("feature_alerts", sa.MetaData(), autoload_with=engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"ts": utc("2026-10-12 09:00").to_pydatetime(),
                                           "feature_name": "f3", "alert_type": "null_rate",
                                           "severity": "critical", "detail": "late"}])
        later = _tick(defs, instance, again.cursor)
        (request,) = _incident_runs(later)
        spec = json.loads(resources["storage"].path(
            INCIDENTS_DIR, f"{request.partition_key}.json").read_text())
        assert spec["entry"]["features"] == {"f3": "2026-10-12T09:00:00+00:00"}
