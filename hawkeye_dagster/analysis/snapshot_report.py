"""One snapshot's diagnosis in one place: a verdict, the gate checks, and plots for people.

The snapshot analyses (weight diff, activations, training curve and
partitions, importance change) each answer one question; this module weighs
their answers. Non-finite numerics (bad predictions, NaN/inf weights) and a
diverged or exploded training run make a snapshot ``bad``; an unusual weight
change, flagged training partitions, a stalled run or bad activations that do
not reach the prediction make it ``suspect``; otherwise it is ``healthy``.
The three gate checks a deployment can block promotion on are
:data:`GATE_CHECKS`.

This module weighs; it reads nothing. The analyses themselves run over a lake through
:mod:`hawkeye_dagster.gather.snapshot_checks` (the one sequence of reads and calls that the
snapshot assets and triage's snapshot branch share), and the plots for people are drawn by
:mod:`hawkeye_dagster.analysis.snapshot_plots`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from hawkeye_dagster.analysis.activations import ActivationDiagnosis

#: served data this long around publication are a snapshot's recent inputs
RECENT_INPUTS = pd.Timedelta("1D")
#: check name -> what it asserts
GATE_CHECKS = {
    "no_nonfinite_outputs": "the snapshot returns no NaN or inf predictions on recent inputs "
                            "and has no NaN/inf weights",
    "no_unusual_weight_change": "no tensor changed unusually against the latest stable snapshots",
    "training_curve_healthy": "the training run neither diverged, exploded nor stalled",
}


@dataclass(frozen=True)
class GateResult:
    """One gate check's outcome: ``passed``; ``checked`` False when its input was unavailable."""

    passed: bool
    checked: bool
    description: str


@dataclass
class SnapshotReport:
    """The verdict on a snapshot and the evidence behind it."""

    snapshot_id: str
    model_id: str
    #: ``bad``, ``suspect`` or ``healthy``
    verdict: str
    #: readable findings, worst first
    findings: list[str]
    gates: dict[str, GateResult]
    #: contract mitigations (``add_guard``, ``rollback_snapshot``)
    mitigations: list[dict[str, Any]] = field(default_factory=list)
    #: analyses that could not run, with the reason
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot_id, "model_id": self.model_id,
                "verdict": self.verdict, "findings": self.findings,
                "gates": {k: vars(v) for k, v in self.gates.items()},
                "mitigations": self.mitigations, "skipped": self.skipped}


def build_report(snapshot_id: str, model_id: str, *, reference: str | None,
                 weights: pd.DataFrame | None, activations: dict | None,
                 curve: dict | None, partitions: pd.DataFrame | None,
                 importance: pd.DataFrame | None = None,
                 skipped: list[str] | None = None) -> SnapshotReport:
    """Weigh the analyses' results (``None`` where an analysis did not run).

    ``weights`` is :func:`~hawkeye_dagster.analysis.weight_diff.compare_weights`'s
    frame, ``activations`` the JSON summary of an
    :class:`~hawkeye_dagster.analysis.activations.ActivationDiagnosis`
    (``bad_output_rows``, ``nonfinite_parameters``, ``healthy``, ``summary``,
    ``guards``), ``curve`` a row of
    :func:`~hawkeye_dagster.analysis.training_diagnosis.curve_checks`,
    ``partitions`` the ranked training partitions, ``importance`` the ranked
    importance change (``feature``, ``significant``, ``summary`` if any).
    """
    findings: list[str] = []
    bad = suspect = False
    skipped = list(skipped or [])
    if activations is not None and not activations["healthy"]:
        findings.append(activations["summary"])
        severe = activations["bad_output_rows"] > 0 or bool(activations["nonfinite_parameters"])
        bad, suspect = bad or severe, suspect or not severe
    if curve is not None and not curve["healthy"]:
        findings.append(f"training run {curve['training_run_id']}: {curve['reason']}")
        severe = bool(curve["diverged"] or curve["exploded"])
        bad, suspect = bad or severe, suspect or not severe
    flagged_partitions = partitions[partitions["flagged"]] if partitions is not None else None
    if flagged_partitions is not None and len(flagged_partitions):
        suspect = True
        findings += [f"training partition {r.partition}: {r.reason}"
                     for r in flagged_partitions.itertuples()]
    flagged = weights[weights["flagged"]] if weights is not None else None
    if flagged is not None and len(flagged):
        nonfinite = (flagged["nan_count"].fillna(0) + flagged["inf_count"].fillna(0)) > 0
        bad, suspect = bad or bool(nonfinite.any()), True
        top = flagged.sort_values("z", ascending=False, na_position="first").head(5)
        findings.append(f"{len(flagged)} tensor(s) changed unusually against {reference}: "
                        + "; ".join(f"{r.parameter}: {r.reason}" for r in top.itertuples()))
    if importance is not None and "significant" in importance and importance["significant"].any():
        moved = importance[importance["significant"]]["feature"].head(5).tolist()
        findings.append("feature importance changed most for " + ", ".join(map(str, moved)))
    verdict = "bad" if bad else "suspect" if suspect else "healthy"
    mitigations = list(activations["guards"]) if activations is not None else []
    if verdict == "bad" and reference is not None:
        mitigations.append({"action": "rollback_snapshot", "model_id": model_id,
                            "to_snapshot_id": reference})
    return SnapshotReport(snapshot_id, model_id, verdict, findings,
                          _gates(reference, weights, activations, curve), mitigations, skipped)


def _gates(reference, weights, activations, curve) -> dict[str, GateResult]:
    if activations is None:
        numerics = GateResult(False, False, "not checked: no recent serving inputs")
    else:
        ok = activations["bad_output_rows"] == 0 and not activations["nonfinite_parameters"]
        numerics = GateResult(ok, True, activations["summary"])
    if weights is None:
        change = GateResult(False, False, "not checked: the weights could not be read")
    else:
        flagged = weights[weights["flagged"]]
        where = f"against {reference}" if reference else "(no stable snapshot to compare with)"
        change = GateResult(flagged.empty, True,
                            f"{len(flagged)} of {len(weights)} tensors flagged {where}")
    if curve is None:
        training = GateResult(False, False, "not checked: no training run or metrics")
    else:
        training = GateResult(bool(curve["healthy"]), True,
                              curve["reason"] or f"{curve['steps']} steps, no divergence, "
                              "explosion or stall")
    return {"no_nonfinite_outputs": numerics, "no_unusual_weight_change": change,
            "training_curve_healthy": training}


def activation_summary(found: ActivationDiagnosis) -> dict[str, Any]:
    """An activation diagnosis as JSON: what :func:`build_report` reads (``healthy``,
    ``bad_output_rows``, ``nonfinite_parameters``, ``summary``, ``guards``) and the details."""
    return {"healthy": found.healthy, "rows": found.rows, "bad_rows": found.bad_rows,
            "bad_output_rows": found.bad_output_rows, "origins": found.origins,
            "path": found.path, "nonfinite_parameters": found.nonfinite_parameters,
            "responsible_features": found.responsible_features, "verified": found.verified,
            "features": found.features.to_dict("records"), "guards": found.guards,
            "summary": found.summary()}
