"""The decision tree on simulated incidents (right root cause and mitigation) and clean worlds."""

from __future__ import annotations

import pytest

from hawkeye_dagster.errors import UnknownIdError
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage.report import validate_report
from hawkeye_dagster.triage.tree import run_triage

INCIDENTS = ["upstream_corruption", "transform_change", "bad_training_partition",
             "exploding_training", "nan_snapshot", "traffic_ramp", "feature_alert_early"]


def triage_truth(simulated, scenario: str, seed: int = 0) -> list[tuple[dict, dict]]:
    lake, truth = simulated(scenario, seed)
    reader = open_lake(lake=str(lake))
    out = []
    for incident in truth["incidents"]:
        window = TimeRange.of(incident["window"]["start"], incident["window"]["end"])
        report = run_triage(reader, incident["entry"], window)
        validate_report(report)
        out.append((incident, report))
    return out


@pytest.mark.parametrize("scenario", INCIDENTS)
def test_incident_root_cause_and_mitigation(simulated, scenario):
    [(incident, report)] = triage_truth(simulated, scenario)
    assert report["verdict"] == "root_cause_found", report["steps"]
    top = report["root_causes"][0]
    expected = incident["root_cause"]
    assert (top["kind"], top["id"]) == (expected["kind"], expected["id"]), report["steps"]
    assert top.get("version") == expected.get("version")
    assert 0.5 <= top["confidence"] <= 1.0
    assert incident["mitigation"] in report["mitigations"]
    for kind in ("snapshots", "training_partitions", "experiments"):
        assert report["suspects"][kind][:1] == incident["suspects"][kind][:1], kind
    assert report["suspects"]["models"]
    assert set(report["suspects"]["models"]) <= set(incident["suspects"]["models"])
    steps = [s["step"] for s in report["steps"]]
    first = {"topline": "topline", "feature_alert": "feature_alert",
             "snapshot": "snapshot_diagnosis"}[incident["entry"]["kind"]]
    assert steps[0] == first


@pytest.mark.parametrize("seed", [0, 3])
def test_clean_world_has_no_issue_from_any_entry(simulated, seed):
    results = triage_truth(simulated, "clean", seed)
    assert {i["entry"]["kind"] for i, _ in results} == {"topline", "snapshot", "feature_alert"}
    for incident, report in results:
        assert report["verdict"] == "no_issue", (incident["name"], report["steps"])
        assert report["root_causes"] == [] and report["mitigations"] == []
    if seed == 3:
        # its routine snapshot's run has a weakly flagged training partition: a candidate far
        # below the bar on a snapshot that serves as well as before is nothing significant
        [snapshot] = [r for i, r in results if i["entry"]["kind"] == "snapshot"]
        assert "training partition" in snapshot["steps"][0]["finding"]
        assert "nothing significant" in snapshot["steps"][-1]["finding"]


def test_auto_entry_finds_the_incident(simulated):
    lake, truth = simulated("upstream_corruption")
    incident = truth["incidents"][0]
    report = run_triage(open_lake(lake=str(lake)), {"kind": "auto"},
                        TimeRange.of(incident["window"]["start"], incident["window"]["end"]))
    validate_report(report)
    assert report["entry"]["selected"]["kind"] == "topline"
    assert report["root_causes"][0]["id"] == incident["root_cause"]["id"]


def test_auto_entry_on_a_clean_world_finds_nothing_to_blame(simulated):
    lake, truth = simulated("clean")
    report = run_triage(open_lake(lake=str(lake)), {"kind": "auto"})
    validate_report(report)
    assert report["verdict"] != "root_cause_found", report["steps"]


@pytest.mark.parametrize("entry, where", [
    ({"kind": "snapshot", "snapshot": "no-such-snapshot"}, "'snapshots', column 'snapshot_id'"),
    ({"kind": "feature_alert", "feature": "no such feature"}, "'features', column 'feature_name'"),
    ({"kind": "topline", "product": "no-such-product"}, "'models', column 'product'"),
    ({"kind": "topline", "product": "feed", "segment": "mars"}, "'models', column 'segment'"),
])
def test_unknown_ids_are_refused_naming_table_and_column(simulated, entry, where):
    lake, _ = simulated("clean")
    with pytest.raises(UnknownIdError, match=where):
        run_triage(open_lake(lake=str(lake)), entry)


def test_traffic_step_words_follow_the_metric_direction(simulated):
    """A ``_lower_is_better`` metric that degraded rose; the traffic step says so."""
    [(incident, report)] = triage_truth(simulated, "traffic_ramp")
    [topline] = [s for s in report["steps"] if s["step"] == "topline"]
    [traffic] = [s for s in report["steps"] if s["step"] == "traffic"]
    metric = topline["evidence"]["metric"]
    word = "rose" if metric.endswith("_lower_is_better") else "fell"
    assert f"the top line {word} as experiment" in traffic["finding"]
