"""The branch protocol: how a debugging workflow plugs into the triage.

A triage walks *stages*. It starts at the entry's stage and, at each stage
it visits, runs every registered branch that serves that stage (built-in
ones first, then outside ones by name). A branch reads a read-only
:class:`TriageContext` (the lake through the triage's cached reads, the
evidence and report so far) and returns :class:`Findings`: steps with their
evidence, suspects, root-cause candidates rated by the branch's own evidence
in [0, 1], mitigations, and the stages to visit next. Only the dispatcher
(:mod:`hawkeye_dagster.triage.tree`) writes the report, so a branch cannot
undo what another found; the candidates keep to the contract's root-cause
kinds (:data:`ROOT_CAUSE_KINDS`), while step names and evidence are free.

The built-in stages and the parameters their visits carry:

=================  ==========================================  ==========================
stage              params                                      sent by
=================  ==========================================  ==========================
``topline``        ``product``, ``segment`` (either ``None``)  the entry
``feature_alert``  ``features``, ``onsets`` (feature -> time)  the entry, ``auto``
``snapshot``       ``snapshot_id``                             the entry, ``auto``
``auto``           (none)                                      the entry
``anomaly``        ``anomaly`` (a top-line row), ``scores``    ``topline``, ``auto``
``model``          ``model_id``, ``segment``, ``onset``,       ``anomaly``
                   ``end``, ``grid``
``snapshots``      ``model_id``, ``rollout``                   ``model``
``features``       ``model_id``, ``onset``, ``end``            ``model``, ``snapshots``
``upstream``       ``onsets`` (feature -> onset)               ``features``,
                                                               ``feature_alert``
=================  ==========================================  ==========================

A branch may also serve a stage of its own: any branch can send a visit to
any stage name, and the branches registered for it run there.

Verdicts: a branch may conclude its visit (``root_cause_found``,
``inconclusive`` or ``no_issue``) or leave it to the stages it sends on; the
visit's verdict is the strongest of its branches' and follow-ups' (a found
root cause over an inconclusive path over nothing). The triage's final
verdict then rests on the calibrated confidences of the root causes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hawkeye_dagster.triage.report import ReportBuilder, report_schema

if TYPE_CHECKING:
    from hawkeye_dagster.triage.data import TriageData
    from hawkeye_dagster.triage.evidence import Evidence

#: the contract's root-cause kinds, as its report schema enumerates them; a candidate of another
#: kind is refused
ROOT_CAUSE_KINDS = tuple(report_schema()["properties"]["root_causes"]["items"]["properties"]
                         ["kind"]["enum"])
#: verdicts from the weakest to the strongest: a visit's verdict is the strongest it reached
VERDICT_STRENGTH = ("no_issue", "inconclusive", "root_cause_found")


@dataclass(frozen=True)
class Visit:
    """A stage to run, with what the branch that sent it found out (see the table above)."""

    stage: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.params[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)


class ReportSoFar:
    """What earlier visits put in the report, copied when a branch reads it (a branch reads,
    the dispatcher writes); most branches never look, so nothing is copied for them."""

    def __init__(self, builder: ReportBuilder):
        self._builder = builder

    @property
    def steps(self) -> tuple[dict, ...]:
        return tuple(copy.deepcopy(self._builder.steps))

    @property
    def suspects(self) -> Mapping[str, tuple[str, ...]]:
        return {k: tuple(v) for k, v in self._builder.suspects.items()}

    @property
    def root_causes(self) -> tuple[dict, ...]:
        return tuple(copy.deepcopy(self._builder.root_causes))


@dataclass(frozen=True)
class TriageContext:
    """What a branch may read: the triage's reads, the evidence and the report so far."""

    #: cached, push-down reads of the lake for the triage's window (``data.reader`` for others)
    data: TriageData
    #: the evidence behind the report's plots, as earlier visits left it (a copy)
    evidence: Evidence
    report: ReportSoFar
    #: reports progress on long work (one line)
    progress: Callable[[str], None]


@dataclass
class Findings:
    """What one branch found at one visit; the dispatcher merges it into the report in order."""

    branch: str
    steps: list[dict] = field(default_factory=list)
    suspects: list[tuple[str, list[str]]] = field(default_factory=list)
    #: root-cause candidates: kind, id, evidence (0..1, the branch's own rating), summary, version
    candidates: list[dict] = field(default_factory=list)
    mitigations: list[dict] = field(default_factory=list)
    #: updates of :class:`~hawkeye_dagster.triage.evidence.Evidence` fields (plots)
    evidence: dict[str, Any] = field(default_factory=dict)
    follow_ups: list[Visit] = field(default_factory=list)
    #: visit the follow-ups in turn until one's verdict is in this set (``None``: visit all)
    until: tuple[str, ...] | None = None
    verdict: str | None = None
    #: whether something is wrong (a degraded top line, model or snapshot); ``None``: unchanged
    degraded: bool | None = None
    #: the incident ``auto`` chose (the report's ``entry.selected``)
    selected: dict | None = None

    def step(self, step: str, finding: str, *, confidence: float | None = None,
             **evidence) -> None:
        """A step of the report: its name, its finding in a sentence, evidence, a confidence."""
        self.steps.append({"step": step, "finding": finding, "confidence": confidence,
                           "evidence": evidence})

    def suspect(self, kind: str, ids) -> None:
        """Suspects of one kind (``models``, ``snapshots``, ``features``, ``lineage_nodes``,
        ``training_partitions``, ``experiments``), most suspect first."""
        self.suspects.append((kind, [str(i) for i in ids]))

    def root_cause(self, kind: str, id: str, *, evidence: float, summary: str,
                   version: str | None = None) -> None:
        """A candidate root cause rated ``evidence`` in [0, 1]; the dispatcher calibrates it."""
        if kind not in ROOT_CAUSE_KINDS:
            raise ValueError(f"branch {self.branch!r}: root-cause kind {kind!r} is not one of "
                             f"the contract's {', '.join(ROOT_CAUSE_KINDS)}")
        self.candidates.append({"kind": kind, "id": str(id), "evidence": float(evidence),
                                "summary": summary, "version": version})

    def mitigate(self, action: dict) -> None:
        self.mitigations.append(dict(action))

    def note(self, **evidence) -> None:
        """Evidence for the report's plots (fields of ``Evidence``)."""
        self.evidence.update(evidence)

    def follow(self, stage: str, **params) -> None:
        """Visit ``stage`` next, after this visit's findings are in the report."""
        self.follow_ups.append(Visit(stage, params))

    def conclude(self, verdict: str) -> None:
        if verdict not in VERDICT_STRENGTH:
            raise ValueError(f"branch {self.branch!r}: unknown verdict {verdict!r}")
        self.verdict = verdict


@runtime_checkable
class Branch(Protocol):
    """A debugging workflow: the stages it serves, and what it finds at a visit of one.

    ``calibration`` maps a root-cause kind to the ``(a, b)`` of a logistic
    curve of the logit of the branch's evidence (see
    :mod:`~hawkeye_dagster.triage.calibration`); a kind it does not map is
    reported at its evidence as rated.
    """

    name: str
    stages: tuple[str, ...]

    def run(self, context: TriageContext, visit: Visit) -> Findings | None: ...


@dataclass(frozen=True)
class FunctionBranch:
    """A branch made of one function ``(context, visit, found) -> None`` that fills ``found``."""

    name: str
    stages: tuple[str, ...]
    function: Callable[[TriageContext, Visit, Findings], None]
    calibration: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def run(self, context: TriageContext, visit: Visit) -> Findings:
        found = Findings(self.name)
        self.function(context, visit, found)
        return found


def branch(name: str, *stages: str, calibration: Mapping[str, tuple[float, float]] | None = None
           ) -> Callable[[Callable[[TriageContext, Visit, Findings], None]], FunctionBranch]:
    """Decorator: ``@branch("serving_errors", "model")`` makes a function a :class:`Branch`."""
    def wrap(function):
        return FunctionBranch(name, tuple(stages), function, dict(calibration or {}))
    return wrap


def strongest(verdicts) -> str | None:
    """The strongest of the verdicts given (``None`` among them is ignored)."""
    found = [v for v in verdicts if v is not None]
    return max(found, key=VERDICT_STRENGTH.index) if found else None
