"""The decision tree on worlds with the simulator's mess factors: known answers and clean worlds.

Each case failed before the analyses handled its factor (daily or mixed-cadence
statistics scanned on an hourly grid; a top-line dip with every model
unchanged called ``inconclusive``).
"""

from __future__ import annotations

import pytest

from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.simulate import simulate
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage.report import validate_report
from hawkeye_dagster.triage.tree import run_triage


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """(scenario, seed, factor) -> [(truth incident, report)], simulated and triaged once."""
    done: dict[tuple[str, int, str], list[tuple[dict, dict]]] = {}

    def make(scenario: str, seed: int, factor: str) -> list[tuple[dict, dict]]:
        key = (scenario, seed, factor)
        if key not in done:
            lake = tmp_path_factory.mktemp(f"{scenario}-{factor}") / "lake"
            truth = simulate(lake, scenario=scenario, seed=seed, factors=[factor])
            reader = open_lake(lake=str(lake))
            done[key] = []
            for incident in truth["incidents"]:
                window = TimeRange.of(incident["window"]["start"], incident["window"]["end"])
                report = run_triage(reader, incident["entry"], window)
                validate_report(report)
                done[key].append((incident, report))
        return done[key]

    return make


@pytest.mark.parametrize("scenario, seed, factor", [
    ("upstream_corruption", 216, "daily_stats"),
    ("transform_change", 217, "daily_stats"),
    ("upstream_corruption", 220, "mixed_cadence"),
])
def test_data_incident_is_traced_whatever_the_statistics_cadence(reports, scenario, seed, factor):
    [(incident, report)] = reports(scenario, seed, factor)
    assert report["verdict"] == "root_cause_found", report["steps"]
    top, expected = report["root_causes"][0], incident["root_cause"]
    assert (top["kind"], top["id"], top.get("version")) == (
        expected["kind"], expected["id"], expected.get("version")), report["steps"]


def test_a_top_line_dip_with_no_ml_cause_is_no_issue_from_every_entry(reports):
    results = reports("clean", 231, "external_dip")
    assert "external_dip" in {i["name"] for i, _ in results}
    for incident, report in results:
        assert report["verdict"] == "no_issue", (incident["name"], report["steps"])
        assert report["root_causes"] == [] and report["mitigations"] == []
