"""The snapshot branch: is a suspect snapshot bad itself, its training data, or its traffic?

The snapshot analyses (activations on recent serving inputs, weights against
the latest operationally stable snapshots, the training run's curves, the
training partitions against their neighbours and serving data) are weighed
by :func:`~hawkeye_dagster.analysis.snapshot_report.build_report`. On top of
that verdict the tree decides: a ``bad`` snapshot (non-finite numerics, a
diverged or exploded run) is the root cause; else a flagged training
partition is; else a snapshot that was already serving and only got more
traffic at the onset points at the traffic change; else the snapshot stays
the suspect on the strength of its served quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.rollout import RolloutFinding
from hawkeye_dagster.analysis.snapshot_report import RECENT_INPUTS
from hawkeye_dagster.contract import higher_is_better
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage import calibration
from hawkeye_dagster.triage.branch import Findings, TriageContext, Visit, branch

if TYPE_CHECKING:
    from hawkeye_dagster.analysis.snapshot_report import SnapshotReport
    from hawkeye_dagster.analysis.training_diagnosis import TrainingLineage

#: serving rows the activations are captured on
ACTIVATION_ROWS = 2000
#: evidence of a snapshot judged ``bad``: a hard defect (non-finite numerics, a diverged or
#: exploded run) observed in the snapshot itself; a prior, since one such defect is decisive
#: whatever its size, left below 1 for the rare defect that is not what users saw
HARD_DEFECT_EVIDENCE = 0.95
#: evidence of a snapshot that is only worse than its peers, before its peer z is weighed:
#: with soft findings (``suspect``) or none; priors (the share its loss rise explains is not
#: separable from a data problem that began as it arrived, so neither reaches the 0.95 above)
SOFT_EVIDENCE = {"suspect": 0.7, "healthy": 0.5}
#: evidence of a snapshot that served worse than its predecessor, entered from its publication
SERVED_WORSE_EVIDENCE = 0.6
#: growth of an arm's traffic share that counts fully as a ramp: a prior, a fifth of the traffic
#: (the share of the model's loss rise the growth explains, tried instead, mixes in what the
#: other arms' hours add and undercounted a clear ramp; left for issue 14)
RAMP_GROWTH = 0.2


@dataclass
class SnapshotDiagnosis:
    """The snapshot analyses' verdict plus what the tree needs beyond it."""

    report: SnapshotReport
    #: the latest operationally stable snapshot before it (rollback target), if any
    reference: str | None
    #: its served quality against its predecessor (a ``stable_snapshots`` row)
    served: pd.Series
    lineage: TrainingLineage | None
    #: its training partitions, most suspect first (``rank_partitions``), or ``None``
    partitions: pd.DataFrame | None

    @property
    def snapshot_id(self) -> str:
        return self.report.snapshot_id

    @property
    def model_id(self) -> str:
        return self.report.model_id

    @property
    def bad_partitions(self) -> pd.DataFrame:
        p = self.partitions
        return p[p["flagged"]] if p is not None else pd.DataFrame(columns=["partition"])

    @property
    def served_worse(self) -> bool:
        """Its served predictions were worse than its predecessor's (or NaN)."""
        return bool(self.served["degraded"])

    def findings(self) -> list[str]:
        served = ([f"served worse than {self.served['predecessor']}: {self.served['reason']}"]
                  if self.served_worse else [])
        return self.report.findings + served


def diagnose_snapshot(context: TriageContext, model_id: str,
                      snapshot_id: str) -> SnapshotDiagnosis:
    """Run every snapshot analysis on one snapshot (those whose inputs are missing are skipped)."""
    from hawkeye_dagster.analysis.snapshot_report import activation_summary, build_report
    from hawkeye_dagster.gather.snapshot_checks import (activation_check, training_check,
                                                        weight_change)
    from hawkeye_dagster.analysis.stable_snapshots import latest_stable, stable_snapshots
    from hawkeye_dagster.analysis.training_diagnosis import training_lineage

    data, reader = context.data, context.data.reader
    snapshots = data.snapshots[data.snapshots["model_id"] == model_id]
    published_at = snapshots.loc[snapshots["snapshot_id"] == snapshot_id, "published_at"].iloc[0]
    task = data.task(model_id)
    context.progress(f"snapshot {snapshot_id}: stable history, weights, activations, training")

    samples = data.quality_samples(model_id).assign(model_id=model_id)
    history = stable_snapshots(snapshots, data.experiments(model_id), samples, {model_id: task},
                               as_of=data.window.end)
    stable = latest_stable(history, model_id, published_at)
    reference = stable[-1] if stable else None
    artifact = dict(zip(snapshots["snapshot_id"], snapshots["artifact"]))
    weights = weight_change(reader, artifact, snapshot_id, stable)

    skipped, activations = [], None
    features = data.model_features(model_id)
    inputs = _served_inputs(context, model_id, features, published_at)
    if len(inputs):
        activations = activation_summary(activation_check(
            reader, artifact[snapshot_id], inputs, features, model_id=model_id,
            snapshot_id=snapshot_id))
    else:
        skipped.append("activations: no served inputs")

    curve = partitions = None
    lineage = training_lineage(snapshots, data.table("training_runs"), snapshot_id)
    if lineage is None:
        skipped.append("training: the snapshot names no known training run")
    else:
        checked = training_check(reader, lineage, features, task, inputs)
        curve, partitions = checked.curve, checked.partitions.ranked
    report = build_report(snapshot_id, model_id, reference=reference, weights=weights,
                          activations=activations, curve=curve, partitions=partitions,
                          skipped=skipped)
    return SnapshotDiagnosis(report, reference, history.set_index("snapshot_id").loc[snapshot_id],
                             lineage, partitions)


def _served_inputs(context: TriageContext, model_id: str, features: list[str],
                   at: pd.Timestamp) -> pd.DataFrame:
    """Up to :data:`ACTIVATION_ROWS` of the model's served rows (features and label) of the day
    before ``at`` (its publication: normal inputs, not those of an incident that came later),
    else of the window's last day."""
    end = context.data.window.end
    for span in (TimeRange(at - RECENT_INPUTS, at), TimeRange(end - RECENT_INPUTS, end)):
        rows = context.data.serving_inputs(model_id, span)
        if len(rows):
            break
    return rows.sort_values("ts", kind="stable").tail(ACTIVATION_ROWS)[[*features, "label"]]


# --- the branch -----------------------------------------------------------------------------

@branch("snapshot_diagnosis", "snapshots", calibration=calibration.ROOT_CAUSES)
def suspect_snapshot(context: TriageContext, visit: Visit, found: Findings) -> None:
    """A snapshot that carries a model's degradation (the ``rollout``'s first suspect): find out
    why and name the root cause.

    A ``bad`` snapshot is the cause. Otherwise its flagged training
    partitions and, for an established arm that ramped up, the traffic change
    are candidates side by side, ranked by their confidence. With neither,
    the snapshot itself is a (weaker) candidate next to what the features
    branch finds: a data problem that began as the snapshot arrived looks
    the same from the rollout alone.
    """
    model_id, rollout = visit["model_id"], visit["rollout"]
    snapshot_id = rollout.suspects[0]
    diagnosis = diagnose_snapshot(context, model_id, snapshot_id)
    _record_diagnosis(found, diagnosis)
    rollback = diagnosis.reference or rollout.previous_snapshot
    found.conclude("root_cause_found")
    if diagnosis.report.verdict == "bad":
        _blame_snapshot(found, diagnosis, rollback, evidence=HARD_DEFECT_EVIDENCE)
        return
    lead = rollout.snapshots.set_index("snapshot_id").loc[snapshot_id]
    if len(diagnosis.bad_partitions) or rollout.traffic_experiment:
        if len(diagnosis.bad_partitions):
            _blame_partition(found, diagnosis)
        if rollout.traffic_experiment:
            _blame_traffic(context, found, model_id, rollout, lead)
        _rollback(found, model_id, rollback)
        return
    evidence = SOFT_EVIDENCE.get(diagnosis.report.verdict, SOFT_EVIDENCE["healthy"])
    _blame_snapshot(found, diagnosis, rollback,
                    evidence=evidence * _saturate(lead["peer_z"], 2.0, missing=1.0))
    found.follow("features", model_id=model_id, onset=context.evidence.onset,
                 end=context.evidence.end)


@branch("snapshot_publication", "snapshot", calibration=calibration.ROOT_CAUSES)
def from_snapshot(context: TriageContext, visit: Visit, found: Findings) -> None:
    """Entry from a snapshot publication (``snapshot_id``): diagnose it, whatever its
    traffic."""
    snapshot_id = visit["snapshot_id"]
    snapshots = context.data.snapshots
    model_id = snapshots.loc[snapshots["snapshot_id"] == snapshot_id, "model_id"].iloc[0]
    found.suspect("models", [model_id])
    diagnosis = diagnose_snapshot(context, model_id, snapshot_id)
    _record_diagnosis(found, diagnosis)
    # flagged training partitions alone do not show the snapshot degraded (each is one finding)
    found.degraded = bool(diagnosis.served_worse or diagnosis.report.verdict == "bad" or
                          len(diagnosis.report.findings) > len(diagnosis.bad_partitions))
    found.conclude("root_cause_found")
    if diagnosis.report.verdict == "bad":
        _blame_snapshot(found, diagnosis, diagnosis.reference, evidence=HARD_DEFECT_EVIDENCE)
    elif len(diagnosis.bad_partitions):
        _blame_partition(found, diagnosis)
        _rollback(found, model_id, diagnosis.reference)
    elif diagnosis.served_worse:
        _blame_snapshot(found, diagnosis, diagnosis.reference, evidence=SERVED_WORSE_EVIDENCE)
    else:
        found.conclude("no_issue")


def _record_diagnosis(found: Findings, diagnosis: SnapshotDiagnosis) -> None:
    findings = diagnosis.findings()
    text = ("; ".join(findings) if findings
            else f"no defect found in snapshot {diagnosis.snapshot_id}")
    found.step("snapshot_diagnosis", text, snapshot=diagnosis.report.to_json(),
               reference=diagnosis.reference, served=diagnosis.served.to_dict())


def _blame_snapshot(found: Findings, diagnosis: SnapshotDiagnosis, rollback: str | None, *,
                    evidence: float) -> None:
    findings = diagnosis.findings()
    summary = (f"snapshot {diagnosis.snapshot_id} of {diagnosis.model_id} is bad: "
               + ("; ".join(findings) if findings else "its predictions are worse than its "
                  "peers' on the same hours, with no defect found in its numerics or training"))
    found.suspect("snapshots", [diagnosis.snapshot_id])
    found.root_cause("snapshot", diagnosis.snapshot_id, evidence=evidence, summary=summary)
    for action in diagnosis.report.mitigations:
        if action["action"] == "add_guard":
            found.mitigate(action)
            if action["guard"] == "clip":
                found.suspect("features", [action["node"]])
    _rollback(found, diagnosis.model_id, rollback)


def _blame_partition(found: Findings, diagnosis: SnapshotDiagnosis) -> None:
    bad = diagnosis.bad_partitions
    found.suspect("snapshots", [diagnosis.snapshot_id])
    found.suspect("training_partitions", bad["partition"])
    for row in bad.itertuples():
        found.root_cause(
            "training_partition", row.partition, evidence=_saturate(row.score, 10.0),
            summary=f"training partition {row.partition} of snapshot {diagnosis.snapshot_id}'s "
                    f"run {diagnosis.lineage.training_run_id}: {row.reason}")


def _blame_traffic(context: TriageContext, found: Findings, model_id: str,
                   rollout: RolloutFinding, lead: pd.Series) -> None:
    """The arm's traffic grew while it was worse than its peers, before and during the incident
    (their peer z's combined by Stouffer's method), times its growth against
    :data:`RAMP_GROWTH` (a prior)."""
    experiment = rollout.traffic_experiment
    growth = lead["share_during"] - lead["share_before"]
    z = np.array([lead["peer_z_before"], lead["peer_z"]], dtype=float)
    z = z[np.isfinite(z)]
    worse = z.sum() / np.sqrt(len(z)) if len(z) else np.nan
    found.suspect("experiments", [experiment])
    found.root_cause(
        "traffic", experiment, evidence=_saturate(worse, 2.0) * min(1.0, growth / RAMP_GROWTH),
        summary=f"experiment {experiment} (snapshot {lead.name}) grew from "
                f"{lead['share_before']:.0%} to {lead['share_during']:.0%} of {model_id}'s "
                f"traffic while its loss was worse than its peers' (peer z {worse:.1f}); the "
                "snapshot shows no severe defect")
    series = context.evidence.series
    moved = "degraded" if series is None else "fell" if higher_is_better(series[2]) else "rose"
    found.step("traffic", f"the top line {moved} as experiment {experiment} ramped up",
               traffic_changes=rollout.traffic_changes.to_dict("records"))


def _rollback(found: Findings, model_id: str, to: str | None) -> None:
    if to:
        found.mitigate({"action": "rollback_snapshot", "model_id": model_id,
                             "to_snapshot_id": to})


def _saturate(x: float, scale: float, missing: float = 0.0) -> float:
    """A z-like score as evidence in (0, 1): ``x / (x + scale)``, ``missing`` if NaN, 0 if < 0."""
    if not np.isfinite(x):
        return missing
    return float(x / (x + scale)) if x > 0 else 0.0


BRANCHES = (suspect_snapshot, from_snapshot)
