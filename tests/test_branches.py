"""The branch registry and dispatcher, and the example outside branch (``examples/serving_errors``).

The example is a separate package registered through its entry point, as a product team's
would be; the project's test command installs it. Its table, ``serving_errors``, lies beyond the
contract: written here with plain pyarrow into a copy of a simulated lake.
"""

from __future__ import annotations

import shutil
from importlib.metadata import EntryPoint, entry_points

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage import registry
from hawkeye_dagster.triage.branch import Findings, Visit, branch
from hawkeye_dagster.triage.tree import TriageRun, triage
from triage_reports import report_differences

EXAMPLE = "serving_errors"


def _installed() -> None:
    if EXAMPLE not in {p.name for p in entry_points(group=registry.GROUP)}:
        pytest.fail("the example branch is not installed: pip install -e examples/serving_errors "
                    "(the README's test command does)")


@pytest.fixture(scope="module")
def incident(simulated):
    lake, truth = simulated("nan_snapshot")
    found = next(i for i in truth["incidents"] if i["name"] == "nan_snapshot")
    window = TimeRange(pd.Timestamp(found["window"]["start"]), pd.Timestamp(found["window"]["end"]))
    return lake, found, window


def _with_errors(lake, root, *, bad: str | None, onset: pd.Timestamp, seed: int = 0):
    """A copy of ``lake`` with a ``serving_errors`` table: every snapshot fails 0.2% of its
    requests, and ``bad`` (if any) 20% from ``onset`` on."""
    shutil.copytree(lake, root)
    served = open_lake(lake=str(lake)).read("serving_samples",
                                            columns=["ts", "model_id", "snapshot_id"])
    hourly = (served.assign(ts=served["ts"].dt.floor("h"))
              .groupby(["ts", "model_id", "snapshot_id"]).size().rename("requests").reset_index())
    rate = np.where((hourly["snapshot_id"] == bad) & (hourly["ts"] >= onset), 0.2, 0.002)
    hourly["errors"] = np.random.default_rng(seed).binomial(hourly["requests"], rate)
    (root / "serving_errors").mkdir()
    pq.write_table(pa.Table.from_pandas(hourly, preserve_index=False),
                   root / "serving_errors" / "part-0.parquet")
    return root


def _report(lake, window, branches=None) -> dict:
    return triage(open_lake(lake=str(lake)), {"kind": "auto"}, window, branches=branches).report


def test_the_example_registers_through_its_entry_point():
    _installed()
    names = [b.name for b in registry.branches()]
    assert names[-1] == EXAMPLE and names[:-1] == [b.name for b in registry.built_in()]


def test_the_example_adds_its_step_and_names_the_snapshot_whose_errors_rose(incident, tmp_path):
    _installed()
    lake, found, window = incident
    bad = found["root_cause"]["id"]
    root = _with_errors(lake, tmp_path / "lake", bad=bad, onset=pd.Timestamp(found["onset"]))
    report = _report(root, window)
    steps = [s["step"] for s in report["steps"]]
    assert steps[steps.index("model_to_snapshots") + 1] == EXAMPLE  # right after its stage
    errors = report["steps"][steps.index(EXAMPLE)]
    assert f"snapshot {bad} " in errors["finding"]
    assert errors["evidence"]["snapshots"][0]["snapshot_id"] == bad
    assert bad in report["suspects"]["snapshots"]
    assert [c["id"] for c in report["root_causes"]][:1] == [bad]  # one candidate, not two


def test_without_a_rise_the_example_says_so_and_changes_no_conclusion(incident, tmp_path):
    _installed()
    lake, found, window = incident
    root = _with_errors(lake, tmp_path / "lake", bad=None, onset=pd.Timestamp(found["onset"]))
    report = _report(root, window)
    baseline = _report(root, window, branches=registry.built_in())
    errors = next(s for s in report["steps"] if s["step"] == EXAMPLE)
    assert errors["finding"].startswith("no snapshot of")
    assert report_differences(baseline["root_causes"], report["root_causes"]) == []
    assert report_differences(baseline["suspects"], report["suspects"]) == []


def test_reports_are_unchanged_without_its_table_or_with_it_disabled(incident, tmp_path,
                                                                     monkeypatch):
    _installed()
    lake, found, window = incident
    without = _report(lake, window, branches=registry.built_in())  # as if uninstalled
    assert report_differences(without, _report(lake, window)) == []
    root = _with_errors(lake, tmp_path / "lake", bad=found["root_cause"]["id"],
                        onset=pd.Timestamp(found["onset"]))
    monkeypatch.setenv(registry.DISABLED, EXAMPLE)
    assert EXAMPLE not in [b.name for b in registry.branches()]
    assert report_differences(without, _report(root, window)) == []


def test_a_failing_outside_branch_is_reported_and_skipped(incident):
    lake, _, window = incident

    @branch("broken", "model")
    def broken(context, visit, found):
        raise RuntimeError("lost its table")

    @branch("bad_kind", "model")
    def bad_kind(context, visit, found):
        found.root_cause("pipeline", "p1", evidence=0.9, summary="not a contract kind")

    report = _report(lake, window, branches=(*registry.built_in(), broken, bad_kind))
    baseline = _report(lake, window, branches=registry.built_in())
    failed = {s["step"]: s["finding"] for s in report["steps"]}
    assert "RuntimeError: lost its table" in failed["broken"]
    assert "'pipeline' is not one of the contract's" in failed["bad_kind"]
    assert report_differences(baseline["root_causes"], report["root_causes"]) == []


@pytest.mark.parametrize("value, message", [
    ("no_such_module_anywhere:branch", "cannot be loaded"),
    ("os:sep", "is not a branch"),
])
def test_a_broken_registration_names_its_entry_point(value, message):
    point = EntryPoint("team_branch", value, registry.GROUP)
    with pytest.raises(registry.BranchRegistrationError,
                       match=f"entry point 'team_branch' .*{message}"):
        registry.load_entry_point(point)


def _dispatch(branches, start: Visit) -> tuple[str | None, list[str]]:
    """Run the dispatcher alone over toy branches (no lake read)."""
    from hawkeye_dagster.triage.evidence import Evidence
    from hawkeye_dagster.triage.report import ReportBuilder

    run = TriageRun(None, ReportBuilder(entry={}), Evidence(), lambda _: None, branches)
    verdict = run.visit(start)
    return verdict, [s["step"] for s in run.report.steps]


def _toy(name: str, stage: str, *, verdict=None, follow=(), until=None):
    @branch(name, stage)
    def toy(context, visit, found: Findings):
        found.step(name, f"{name} at {visit.stage}")
        for target in follow:
            found.follow(target)
        found.until = until
        if verdict:
            found.conclude(verdict)
    return toy


def test_branches_of_one_stage_all_record_before_any_follow_up():
    branches = (_toy("a", "start", follow=("deep",)), _toy("b", "start"),
                _toy("deep", "deep", verdict="inconclusive"))
    assert _dispatch(branches, Visit("start")) == ("inconclusive", ["a", "b", "deep"])


def test_follow_ups_in_turn_stop_at_the_first_that_finds_a_cause():
    branches = (_toy("start", "start", follow=("x", "y", "z"), until=("root_cause_found",)),
                _toy("x", "x", verdict="no_issue"), _toy("y", "y", verdict="root_cause_found"),
                _toy("z", "z", verdict="inconclusive"))
    assert _dispatch(branches, Visit("start")) == ("root_cause_found", ["start", "x", "y"])


def test_a_stage_no_branch_serves_concludes_nothing():
    assert _dispatch((_toy("start", "start", follow=("nowhere",)),), Visit("start")) == \
        (None, ["start"])
