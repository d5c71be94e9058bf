"""One snapshot's diagnosis in one place: a verdict, the gate checks, and plots for people.

The snapshot analyses (weight diff, activations, training curve and
partitions, importance change) each answer one question; this module weighs
their answers. Non-finite numerics (bad predictions, NaN/inf weights) and a
diverged or exploded training run make a snapshot ``bad``; an unusual weight
change, flagged training partitions, a stalled run or bad activations that do
not reach the prediction make it ``suspect``; otherwise it is ``healthy``.
The three gate checks a deployment can block promotion on are
:data:`GATE_CHECKS`.

The analyses themselves run over a lake through :func:`weight_change`,
:func:`activation_check` and :func:`training_check`, the one sequence of
reads and calls that the snapshot assets (a step each, results stored) and
triage's snapshot branch (all in one go) share; the callers choose the
inputs (stable snapshots, served rows).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from hawkeye_dagster.analysis.activations import ActivationDiagnosis
    from hawkeye_dagster.analysis.training_diagnosis import PartitionDiagnosis, TrainingLineage
    from hawkeye_dagster.lake.reader import TelemetryReader

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

    ``weights`` is :func:`~hawkeye_dagster.analysis.weight_diff.weight_diff`'s
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


# --- the analyses over a lake --------------------------------------------------------------

def weight_change(reader: TelemetryReader, artifacts: Mapping[str, str], snapshot_id: str,
                  stable: Sequence[str]) -> pd.DataFrame:
    """:func:`~hawkeye_dagster.analysis.weight_diff.weight_diff` of a snapshot against the last
    of its ``stable`` snapshots (oldest first), scored against their stable-to-stable history.

    ``artifacts`` maps snapshot ids to their ``snapshots.artifact``. Every archive is checked
    and streamed tensor by tensor (:func:`~hawkeye_dagster.snapshot_io.artifact_weights`).
    """
    from hawkeye_dagster.analysis.weight_diff import weight_change_history, weight_diff
    from hawkeye_dagster.snapshot_io import artifact_weights

    with ExitStack() as stack:
        current, *history = [
            stack.enter_context(artifact_weights(reader, artifacts[s], snapshot_id=s))
            for s in [snapshot_id, *stable]]
        return weight_diff(current, history[-1] if history else None,
                           weight_change_history(history))


def activation_check(reader: TelemetryReader, artifact: str, inputs: pd.DataFrame,
                     features: list[str], *, model_id: str,
                     snapshot_id: str) -> ActivationDiagnosis:
    """The snapshot's program (loaded through the archive checks) run on served ``inputs`` with
    every node captured (:func:`~hawkeye_dagster.analysis.activations.diagnose_activations`)."""
    from hawkeye_dagster.analysis.activations import diagnose_activations
    from hawkeye_dagster.snapshot_io import load_artifact

    program = load_artifact(reader, artifact, snapshot_id=snapshot_id)
    return diagnose_activations(program.module(), inputs[features].to_numpy(np.float32),
                                features, model_id=model_id)


def activation_summary(found: ActivationDiagnosis) -> dict[str, Any]:
    """An activation diagnosis as JSON: what :func:`build_report` reads (``healthy``,
    ``bad_output_rows``, ``nonfinite_parameters``, ``summary``, ``guards``) and the details."""
    return {"healthy": found.healthy, "rows": found.rows, "bad_rows": found.bad_rows,
            "bad_output_rows": found.bad_output_rows, "origins": found.origins,
            "path": found.path, "nonfinite_parameters": found.nonfinite_parameters,
            "responsible_features": found.responsible_features, "verified": found.verified,
            "features": found.features.to_dict("records"), "guards": found.guards,
            "summary": found.summary()}


@dataclass(frozen=True)
class TrainingCheck:
    """A snapshot's training run checked: its curves and its dataset partitions."""

    #: the run's ``training_metrics`` rows
    metrics: pd.DataFrame
    #: the run's row of :func:`~hawkeye_dagster.analysis.training_diagnosis.curve_checks`,
    #: ``None`` without metrics
    curve: dict | None
    #: its partitions against their neighbours and against ``serving``
    partitions: PartitionDiagnosis


def training_check(reader: TelemetryReader, lineage: TrainingLineage, features: list[str],
                   task: str, serving: pd.DataFrame) -> TrainingCheck:
    """The run's loss and gradient curves, and its partitions (read with their neighbours)
    against each other and against the ``serving`` rows (``features`` and ``label``)."""
    from hawkeye_dagster.analysis.training_diagnosis import (
        curve_checks, diagnose_partitions, neighbour_partitions)

    metrics = reader.read("training_metrics", equals={"training_run_id": lineage.training_run_id})
    curves = curve_checks(metrics)
    listing = reader.read("training_data", columns=["partition"],
                          equals={"dataset_id": lineage.dataset_id})["partition"].unique()
    train = reader.training_data(lineage.dataset_id,
                                 neighbour_partitions(listing, lineage.partitions),
                                 columns=["partition", "label", *features])
    return TrainingCheck(metrics, curves.iloc[0].to_dict() if len(curves) else None,
                         diagnose_partitions(train, lineage.partitions, serving, features, task,
                                             lineage.dataset_id))


# --- plots ---------------------------------------------------------------------------------

def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _subplots(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _figure(rows: int):
    return _subplots(figsize=(8, max(2.5, 0.22 * rows + 1)))


def weight_change_plot(weights: pd.DataFrame) -> bytes:
    """Horizontal bars of each tensor's relative L2 change (log scale), its normal change as a
    tick, flagged tensors in red. PNG bytes."""
    rows = weights.dropna(subset=["rel_l2"]).head(60)
    fig, ax = _figure(len(rows))
    y = np.arange(len(rows))
    colors = np.where(rows["flagged"], "tab:red", "tab:blue")
    ax.barh(y, rows["rel_l2"].clip(lower=1e-12), color=colors)
    ax.scatter(rows["normal_rel_l2"], y, marker="|", color="black", s=120, label="usual change")
    ax.set_yticks(y, rows["parameter"], fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("relative L2 change vs latest stable snapshot")
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def activation_range_plot(nodes: pd.DataFrame) -> bytes:
    """Each computed node's range over finite values (symlog scale); bad nodes in red. PNG bytes."""
    rows = nodes[nodes["batched"]].head(60)
    fig, ax = _figure(len(rows))
    y = np.arange(len(rows))
    colors = np.where(rows["bad"], "tab:red", "tab:blue")
    ax.hlines(y, rows["min"], rows["max"], colors=colors, linewidth=4)
    ax.set_yticks(y, rows["node"], fontsize=7)
    ax.set_xscale("symlog")
    ax.invert_yaxis()
    ax.set_xlabel("activation range (finite values)")
    return _png(fig)


def training_curve_plot(metrics: pd.DataFrame, curve: dict) -> bytes:
    """Loss and gradient norm per step (log scale) with the onsets found. PNG bytes."""
    fig, (top, bottom) = _subplots(2, 1, figsize=(8, 5), sharex=True)
    metrics = metrics.sort_values("step")
    top.plot(metrics["step"], metrics["loss"], lw=1)
    bottom.plot(metrics["step"], metrics["grad_norm"], lw=1, color="tab:orange")
    top.set_ylabel("loss")
    bottom.set_ylabel("grad norm")
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.set_yscale("log")
    for key, label, color in [("divergence_step", "divergence", "tab:red"),
                              ("explosion_step", "explosion", "tab:purple"),
                              ("plateau_step", "plateau", "tab:gray")]:
        if curve.get(key) is not None and pd.notna(curve[key]):
            for ax in (top, bottom):
                ax.axvline(curve[key], color=color, ls="--", lw=1)
            top.text(curve[key], top.get_ylim()[1], label, color=color, fontsize=7, va="top")
    return _png(fig)
