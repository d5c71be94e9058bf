"""HawkEye's decision tree: a dispatcher over the registered branches.

The built-in branches make the tree: top-line anomaly -> models whose
prediction quality fell with it -> that model's snapshots -> either a suspect
snapshot (diagnosed: numerics, weights, training run and partitions, or a
traffic change of its arm), or all snapshots degraded alike -> the features
that moved -> their upstream lineage. A feature alert enters at the features,
a snapshot publication at the snapshot diagnosis, and ``auto`` finds the
incidents in the window and triages the most severe. Outside branches
(:mod:`hawkeye_dagster.triage.registry`) join the stages they serve. Every
step records its finding, evidence and confidence in the report; the
dispatcher is the only writer of the report, and calibrates each candidate
root cause with its branch's curves.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage import calibration, registry
from hawkeye_dagster.triage.branch import (Branch, Findings, ReportSoFar, TriageContext, Visit,
                                           strongest)
from hawkeye_dagster.triage.confirm import confirm_root_causes
from hawkeye_dagster.triage.data import TriageData
from hawkeye_dagster.triage.entry import check_entry, entry_features, entry_onsets, resolve_window
from hawkeye_dagster.triage.evidence import Evidence
from hawkeye_dagster.triage.report import ReportBuilder
from hawkeye_dagster.triage.topline_branch import SIGNIFICANT_SHIFT_Z

Progress = Callable[[str], None]
#: a root cause whose calibrated confidence is below this is not "found"
MIN_CONFIDENCE = 0.5
EVIDENCE_FIELDS = frozenset(f.name for f in dataclasses.fields(Evidence))


@dataclass
class TriageResult:
    report: dict
    evidence: Evidence


def run_triage(reader: TelemetryReader, entry: dict, window: TimeRange | None = None,
               progress: Progress | None = None) -> dict:
    """Run the decision tree and return the root-cause report (contract section 5).

    ``entry`` is the report's entry object (see :mod:`hawkeye_dagster.triage.entry`);
    ``window`` may be ``None`` or open-ended (defaults of
    :func:`~hawkeye_dagster.triage.entry.resolve_window`). Raises
    :class:`~hawkeye_dagster.errors.UnknownIdError` for ids the lake lacks and
    :class:`~hawkeye_dagster.errors.ContractError` for broken tables.
    """
    return triage(reader, entry, window, progress).report


def triage(reader: TelemetryReader, entry: dict, window: TimeRange | None = None,
           progress: Progress | None = None,
           branches: tuple[Branch, ...] | None = None) -> TriageResult:
    """:func:`run_triage`, with the evidence behind the report's plots; ``branches`` defaults
    to the registered ones (:func:`~hawkeye_dagster.triage.registry.branches`)."""
    window = resolve_window(reader, *((window.start, window.end) if window else ()))
    check_entry(reader, entry)
    builder = ReportBuilder(entry={**entry, "window": {"start": window.start, "end": window.end}})
    run = TriageRun(TriageData(reader, window), builder, Evidence(), progress or (lambda _: None),
                    registry.branches() if branches is None else branches)
    verdict = run.visit(entry_visit(entry)) or "inconclusive"
    confirm_root_causes(run)
    best = max((c["confidence"] for c in builder.root_causes), default=None)
    if best is not None and best >= MIN_CONFIDENCE:
        verdict = "root_cause_found"
    elif best is not None and run.degraded:
        verdict = "inconclusive"
        builder.step("verdict", f"the best root cause has confidence {best:.2f}, below "
                                f"{MIN_CONFIDENCE}: evidence is too weak or conflicting")
    elif best is not None:
        verdict = "no_issue"
        builder.step("verdict", f"nothing degraded, and the best candidate has confidence "
                                f"{best:.2f}, below {MIN_CONFIDENCE}: nothing significant")
    elif verdict == "inconclusive" and not run.degraded:
        verdict = "no_issue"
        builder.step("verdict", "no root cause, under a top-line excursion below "
                                f"{SIGNIFICANT_SHIFT_Z:g} robust sigmas: nothing significant")
    return TriageResult(builder.build(verdict), run.evidence)


def entry_visit(entry: dict) -> Visit:
    """The stage a report's entry starts at, with its parameters."""
    kind = entry["kind"]
    if kind == "topline":
        return Visit("topline", {"product": entry.get("product"),
                                 "segment": entry.get("segment")})
    if kind == "feature_alert":
        return Visit("feature_alert", {"features": entry_features(entry),
                                       "onsets": entry_onsets(entry)})
    if kind == "snapshot":
        return Visit("snapshot", {"snapshot_id": entry["snapshot"]})
    return Visit("auto")


@dataclass
class TriageRun:
    """One triage in progress: what it reads, the report it builds, the evidence for plots."""

    data: TriageData
    report: ReportBuilder
    evidence: Evidence
    progress: Progress
    branches: tuple[Branch, ...]
    #: whether the tree found something wrong (a degraded top line, model or snapshot): then
    #: weak root causes leave the triage ``inconclusive``; otherwise nothing is significant
    degraded: bool = True

    def visit(self, visit: Visit) -> str | None:
        """Run every branch serving the visit's stage, record what each found, then visit
        their follow-ups; returns the strongest verdict reached (``None``: no branch spoke)."""
        done = [(b, self._run(b, visit)) for b in registry.for_stage(visit.stage, self.branches)]
        verdicts = []
        for branch, found in done:
            if found is not None:
                self._record(branch, found)
                verdicts.append(found.verdict)
        for _, found in done:
            if found is not None:
                verdicts.append(self._follow(found))
        return strongest(verdicts)

    def _run(self, branch: Branch, visit: Visit) -> Findings | None:
        context = TriageContext(self.data, copy.copy(self.evidence), ReportSoFar(self.report),
                                self.progress)
        if branch in registry.built_in():
            return branch.run(context, visit)  # the project's errors reach the user as they are
        try:
            found = branch.run(context, visit)
            if found is not None and not isinstance(found, Findings):
                raise TypeError(f"run() returned {type(found).__name__}, not Findings")
            if found is not None:
                self._check(branch, found)
            return found
        except Exception as error:  # an outside branch's bug must not lose the triage
            failed = Findings(branch.name)
            failed.step(f"{branch.name}", f"branch {branch.name!r} failed at stage "
                        f"{visit.stage!r} and was skipped: {type(error).__name__}: {error}")
            self.progress(f"branch {branch.name}: failed ({error}); skipped")
            return failed

    @staticmethod
    def _check(branch: Branch, found: Findings) -> None:
        unknown = sorted(set(found.evidence) - EVIDENCE_FIELDS)
        if unknown:
            raise ValueError(f"unknown evidence fields {unknown} (plots know "
                             f"{sorted(EVIDENCE_FIELDS)}); put free evidence in a step")

    def _follow(self, found: Findings) -> str | None:
        results = []
        for visit in found.follow_ups:
            results.append(self.visit(visit))
            if found.until is not None and results[-1] in found.until:
                break
        return strongest(results)

    def _record(self, branch: Branch, found: Findings) -> None:
        report = self.report
        for step in found.steps:
            report.step(step["step"], step["finding"], confidence=step["confidence"],
                        **step["evidence"])
        for kind, ids in found.suspects:
            report.suspect(kind, ids)
        curves = getattr(branch, "calibration", None) or {}
        named = {(c["kind"], c["id"]): c for c in report.root_causes}
        for cause in found.candidates:
            confidence = calibration.root_cause_confidence(cause["kind"], cause["evidence"],
                                                           curves)
            known = named.get((cause["kind"], cause["id"]))
            if known is not None:  # a second branch names it too: the stronger rating stands
                known["confidence"] = max(known["confidence"], round(confidence, 3))
                continue
            report.root_cause(cause["kind"], cause["id"], confidence, cause["summary"],
                              version=cause["version"])
        for action in found.mitigations:
            report.mitigate(action)
        for name, value in found.evidence.items():
            setattr(self.evidence, name, value)
        if found.degraded is not None:
            self.degraded = found.degraded
        if found.selected is not None:
            report.entry["selected"] = found.selected
