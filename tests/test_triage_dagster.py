"""The incident report asset, the top-line sensor and the triage command, on real instances."""

from __future__ import annotations

import argparse
import json

import dagster as dg
import pytest

from hawkeye_dagster.assets import telemetry
from hawkeye_dagster.assets import triage as triage_assets
from hawkeye_dagster.assets.partitions import incident_partitions
from hawkeye_dagster.dagster_runner import triage_command
from hawkeye_dagster.errors import ContractError, UnknownIdError
from hawkeye_dagster.incidents import INCIDENTS_DIR, REPORTS_DIR, Incident
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.sensors import topline as topline_sensors


def resources(lake, root) -> dict:
    return {"telemetry": TelemetrySource(lake=str(lake)), "storage": HawkeyeStorage(root=str(root))}


def triage_defs(lake, root) -> dg.Definitions:
    return dg.Definitions.merge(telemetry.defs, triage_assets.defs, topline_sensors.defs,
                                dg.Definitions(resources=resources(lake, root)))


def test_incident_report_materializes_with_its_check(simulated, tmp_path):
    lake, truth = simulated("upstream_corruption")
    incident = truth["incidents"][0]
    opened = Incident(incident["entry"], incident["window"]["start"], incident["window"]["end"])
    defs = triage_defs(lake, tmp_path)
    with dg.instance_for_test() as instance:
        report = triage_assets.materialize_incident(defs, opened, instance)
        key = opened.incident_id
        event = instance.get_latest_materialization_event(triage_assets.INCIDENT_REPORT)
        assert event.dagster_event.partition == key
        metadata = event.asset_materialization.metadata
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(triage_assets.INCIDENT_REPORT, "report_conforms_to_contract"), limit=1)
    assert report["root_causes"][0]["id"] == incident["root_cause"]["id"]
    assert metadata["verdict"].value == "root_cause_found"
    assert "data:image/png;base64," in metadata["report"].value
    assert metadata["json"].value == report
    assert checks[0].status.value == "SUCCEEDED"
    stored = json.loads((tmp_path / REPORTS_DIR / f"{key}.json").read_text())
    assert stored == report
    assert (tmp_path / REPORTS_DIR / key / "top_line.png").exists()
    cause = report["root_causes"][0]
    assert "explains " in metadata["report"].value
    assert (tmp_path / REPORTS_DIR / key /
            f"counterfactual_of_{cause['kind']}_{cause['id']}.png").exists()


def test_topline_sensor_opens_one_incident_per_degraded_segment(simulated, tmp_path):
    lake, truth = simulated("upstream_corruption")
    expected = truth["incidents"][0]["entry"]
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources(lake, tmp_path))
        result = topline_sensors.topline_anomaly_sensor(context)
        assert isinstance(result, dg.SensorResult) and result.run_requests
        incidents = [Incident.from_json(json.loads(
            (tmp_path / INCIDENTS_DIR / f"{r.partition_key}.json").read_text()))
            for r in result.run_requests]
        segments = [(i.entry["product"], i.entry["segment"]) for i in incidents]
        assert (expected["product"], expected["segment"]) in segments
        assert len(segments) == len(set(segments))
        assert [r.run_key for r in result.run_requests] == [i.incident_id for i in incidents]
        [add] = result.dynamic_partitions_requests
        assert add.partitions_def_name == incident_partitions.name
        assert set(add.partition_keys) == {i.incident_id for i in incidents}

        again = topline_sensors.topline_anomaly_sensor(dg.build_sensor_context(
            instance=instance, cursor=result.cursor, resources=resources(lake, tmp_path)))
        assert isinstance(again, dg.SkipReason) and "no top-line data after" in again.skip_message


def test_topline_sensor_on_a_clean_world_blames_nothing_and_then_skips(simulated, tmp_path):
    """A fresh sensor scans the whole history. On a clean world it may open incidents for the
    top line's own weak drifts, but the triage of each finds no root cause, and once the
    history is scanned a tick skips."""
    from hawkeye_dagster.lake.open import open_lake
    from hawkeye_dagster.triage.tree import run_triage

    lake, _ = simulated("clean")
    reader = open_lake(lake=str(lake))
    newest = reader.read("topline_metrics", columns=["ts"])["ts"].max()
    opened, cursor = [], None
    with dg.instance_for_test() as instance:
        for _ in range(30):
            context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                              resources=resources(lake, tmp_path))
            result = topline_sensors.topline_anomaly_sensor(context)
            if isinstance(result, dg.SkipReason):  # nothing newer than the scanned history
                break
            cursor = result.cursor
            opened += [r.partition_key for r in result.run_requests or []]
    assert topline_sensors.ToplineCursor.load(cursor).latest == newest
    assert "no top-line data after" in result.skip_message
    for incident_id in opened:
        incident = Incident.from_json(json.loads(
            (tmp_path / INCIDENTS_DIR / f"{incident_id}.json").read_text()))
        report = run_triage(reader, incident.entry, incident.window)
        assert report["verdict"] != "root_cause_found", (incident_id, report["root_causes"])


def test_plan_incidents_does_not_reopen_an_ongoing_degradation():
    import pandas as pd

    onset = pd.Timestamp("2026-10-10T06:00", tz="UTC")
    hours = pd.Timedelta("1h")
    anomalies = pd.DataFrame({"product": ["feed", "feed"], "segment": ["us", "us"],
                              "metric": ["engagement", "hide_rate_lower_is_better"],
                              "onset": [onset, onset], "end": [onset + 5 * hours] * 2,
                              "relative_change": [-0.1, 0.2], "score": [50.0, 20.0]})
    cursor = topline_sensors.ToplineCursor()
    [first] = topline_sensors.plan_incidents(anomalies, cursor)
    assert first.detail["metric"] == "engagement"
    # the next ticks see the same degradation go on, its onset sliding with the scanned hours
    for day in range(1, 4):
        later = anomalies.assign(onset=onset + pd.Timedelta(days=day),
                                 end=onset + pd.Timedelta(days=day) + 5 * hours)
        assert topline_sensors.plan_incidents(later, cursor) == []
    restored = topline_sensors.ToplineCursor.load(cursor.dump())
    assert restored.open == {("feed", "us"): onset + pd.Timedelta(days=3) + 5 * hours}
    again = anomalies.assign(onset=onset + pd.Timedelta(days=6), end=onset + pd.Timedelta(days=6))
    assert len(topline_sensors.plan_incidents(again, restored)) == 1


def _args(lake, **options) -> argparse.Namespace:
    base = {"lake": str(lake), "sql": None, "start": None, "end": None, "product": None,
            "segment": None, "snapshot": None, "feature": None, "json": True}
    return argparse.Namespace(**{**base, **options})


def test_triage_command_prints_the_json_report(simulated, capsys):
    lake, truth = simulated("nan_snapshot")
    incident = truth["incidents"][0]
    status = triage_command(_args(lake, snapshot=incident["entry"]["snapshot"],
                                  start=incident["window"]["start"],
                                  end=incident["window"]["end"]), progress=lambda _: None)
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["root_causes"][0]["id"] == incident["root_cause"]["id"]
    assert incident["mitigation"] in report["mitigations"]


@pytest.mark.parametrize("options, error, where", [
    ({"snapshot": "nope"}, UnknownIdError, "snapshots"),
    ({"start": "not a time"}, UnknownIdError, "bad options"),
    ({"product": "feed", "feature": "x"}, UnknownIdError, "one entry point"),
])
def test_triage_command_refuses_bad_input(simulated, options, error, where):
    lake, _ = simulated("clean")
    with pytest.raises(error, match=where):
        triage_command(_args(lake, **options), progress=lambda _: None)


def test_triage_command_refuses_a_missing_lake(tmp_path):
    with pytest.raises(ContractError):
        triage_command(_args(tmp_path / "missing"), progress=lambda _: None)


def test_headless_demo_opens_every_incident_of_the_demo_lake(simulated):
    from hawkeye_dagster.lake.open import open_lake
    from hawkeye_dagster.dagster_runner import find_incidents

    lake, truth = simulated("demo")
    found = [f["entry"] for f in find_incidents(open_lake(lake=str(lake)))]
    for incident in truth["incidents"]:
        entry = incident["entry"]
        if entry["kind"] == "topline":
            assert {"kind": "topline", "product": entry["product"],
                    "segment": entry["segment"]} in found, entry
        else:
            assert entry in found, entry


def test_cli_exit_statuses(simulated, capsys):
    from hawkeye_dagster.cli import main

    lake, truth = simulated("nan_snapshot")
    incident = truth["incidents"][0]
    assert main(["triage", "--lake", str(lake), "--snapshot", incident["entry"]["snapshot"],
                 "--start", incident["window"]["start"], "--end", incident["window"]["end"],
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "root_cause_found"
    assert main(["triage", "--lake", str(lake), "--snapshot", "no-such-snapshot"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'snapshots'" in err[0] and "'snapshot_id'" in err[0]
