"""Snapshot tests of the triage reports: what the tree concludes on every simulator scenario.

Each scenario's reports (the automatic entry and each incident's own entry, see
:func:`triage_reports.worlds`) are compared with the ones committed under
``tests/report_snapshots/``: verdict, ranked root causes with their confidences, suspects,
mitigations and every step with its evidence. A change to the tree's code that changes a
report fails here; when the change is meant (a better report, with the reason in the commit),
re-write the snapshots with ``HAWKEYE_UPDATE_REPORT_SNAPSHOTS=1 pytest
tests/test_report_snapshots.py`` and review their diff.

Floats are compared to a relative 1e-6 (torch's CPU kernels may differ in the last bits
between processors); the lake's temporary folder is written as ``<lake>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hawkeye_dagster.simulate.scenarios import SCENARIOS
from triage_reports import report_differences

SNAPSHOTS = Path(__file__).with_name("report_snapshots")
UPDATE = os.environ.get("HAWKEYE_UPDATE_REPORT_SNAPSHOTS") == "1"


def _portable(value, lake: str):
    """``value`` with the lake's temporary path written as ``<lake>``."""
    if isinstance(value, dict):
        return {k: _portable(v, lake) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, lake) for v in value]
    return value.replace(lake, "<lake>") if isinstance(value, str) else value


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_reports_match_their_snapshot(scenario, worlds):
    world = worlds(scenario)
    reports = _portable(world.reports, str(world.canonical))
    path = SNAPSHOTS / f"{scenario}.json"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(reports, indent=1, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert sorted(expected) == sorted(reports), "the scenario's entries changed"
    for name in expected:
        assert report_differences(expected[name], reports[name], f"{scenario}:{name}",
                                  tolerance=1e-6) == []
