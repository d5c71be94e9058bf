"""Triage reports of the simulator's scenarios, shared by the metamorphic and snapshot tests.

:func:`worlds` (a session fixture, registered in ``conftest.py``) simulates a scenario once
(small, seed 0), re-writes it in the canonical encoding and triages it for the automatic entry
and for each incident's own entry, as ``hawkeye-dagster triage --json`` does;
:func:`report_differences` says where two reports differ.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

import reencode as R
from hawkeye_dagster.dagster_runner import triage_command

#: floats of two reports of one lake agree to this relative (and absolute) tolerance
TOLERANCE = 1e-9


@dataclass
class World:
    scenario: str
    logical: R.Logical
    #: the world in the canonical encoding, and its reports by entry name
    canonical: Path
    entries: dict[str, dict]
    reports: dict[str, dict]


def triage(lake: str | None = None, sql: str | None = None, **options) -> dict:
    """The JSON report of ``hawkeye-dagster triage --json``, run in-process as the CLI runs it."""
    args = {"lake": lake, "sql": sql, "start": None, "end": None, "product": None,
            "segment": None, "snapshot": None, "feature": None, "json": True, **options}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert triage_command(argparse.Namespace(**args), progress=lambda _: None) == 0
    return json.loads(out.getvalue())


def triage_entries(truth: dict) -> dict[str, dict]:
    """Triage options per entry: the automatic one and each incident's own, with its window (a
    clean world's "incidents" are a routine top line, snapshot and info alert: no issue)."""
    entries = {"auto": {}}
    for incident in truth["incidents"]:
        entry, window = incident["entry"], incident["window"]
        options = {"start": window["start"], "end": window["end"]}
        options.update({"topline": {"product": entry.get("product"),
                                    "segment": entry.get("segment")},
                        "snapshot": {"snapshot": entry.get("snapshot")},
                        "feature_alert": {"feature": entry.get("feature")}}[entry["kind"]])
        entries[incident["name"]] = options
    return entries


@pytest.fixture(scope="session")
def worlds(simulated, tmp_path_factory):
    """``get(scenario)``: the :class:`World` of a simulated scenario (small, seed 0), built once."""
    built: dict[str, World] = {}

    def get(scenario: str) -> World:
        if scenario not in built:
            lake, truth = simulated(scenario)
            content = R.read_lake(lake)
            canonical = R.write_encoded(tmp_path_factory.mktemp(f"{scenario}-canonical"),
                                        content, R.canonical_encoding(content))
            entries = triage_entries(truth)
            built[scenario] = World(scenario, content, canonical, entries,
                                    {name: triage(lake=str(canonical), **options)
                                     for name, options in entries.items()})
        return built[scenario]

    return get


def report_differences(expected, got, path: str = "report", *,
                       tolerance: float = TOLERANCE) -> list[str]:
    """Where two reports differ: every value equal, floats to a relative ``tolerance``, lists
    in order."""
    if isinstance(expected, dict) and isinstance(got, dict):
        return [d for k in sorted(set(expected) | set(got), key=str)
                for d in (report_differences(expected[k], got[k], f"{path}.{k}",
                                           tolerance=tolerance)
                          if k in expected and k in got else [f"{path}.{k}: in one report only"])]
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return [f"{path}: {len(expected)} items != {len(got)}"]
        return [d for i, (a, b) in enumerate(zip(expected, got))
                for d in report_differences(a, b, f"{path}[{i}]", tolerance=tolerance)]
    if isinstance(expected, float) and isinstance(got, float):
        same = math.isclose(expected, got, rel_tol=tolerance, abs_tol=tolerance) or \
            (math.isnan(expected) and math.isnan(got))
        return [] if same else [f"{path}: {expected!r} != {got!r}"]
    return [] if expected == got else [f"{path}: {expected!r} != {got!r}"]
