"""Model to snapshots: which snapshot rollout, if any, explains a model's degradation.

Snapshots of one model that serve side by side in A/B arms see the same
hours, the same users and the same features, so comparing their losses hour
by hour cancels everything but the snapshot. The model's loss increase is
split (shift-share) into what each snapshot adds by being served instead of
its peers and what they all share: snapshots carrying most of it are
suspects; a degradation shared by all points away from the snapshots (to
the features); and an established snapshot that was worse all along but
whose arm's traffic grew at the onset means a traffic change moved the top line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.model_isolation import degradation_z

SNAPSHOT_COLUMNS = ["snapshot_id", "experiments", "first_seen", "share_before", "share_during",
                    "loss_before", "loss_during", "nan_fraction", "peer_z_before", "peer_gap",
                    "peer_z", "self_z", "own_change", "contribution"]
CHANGE_COLUMNS = ["ts", "experiment_id", "snapshot_id", "segment", "before", "after"]


@dataclass(frozen=True)
class RolloutFinding:
    """What the rollout timeline says about a degraded model."""

    #: ``snapshot`` (some snapshots are worse than their peers or arrived with
    #: the degradation), ``all_snapshots`` (every snapshot degraded alike: look
    #: at the features) or ``none`` (the rollout explains nothing)
    verdict: str
    #: suspect snapshot ids, most suspect first
    suspects: list[str]
    #: the model's loss increase from before to during the incident (row-weighted)
    delta: float
    #: one row per snapshot served in the segment (:data:`SNAPSHOT_COLUMNS`)
    snapshots: pd.DataFrame
    #: traffic-fraction changes of the segment's arms in the incident's hours
    #: (:data:`CHANGE_COLUMNS`)
    traffic_changes: pd.DataFrame
    #: the experiment arm whose traffic growth, not a change of the snapshot, explains the onset
    traffic_experiment: str | None
    #: the snapshot that carried most traffic just before the incident and is not a suspect
    previous_snapshot: str | None
    #: configured traffic fraction per experiment arm on the grid ``[T, arms]``
    timeline: pd.DataFrame


def traffic_timeline(experiments: pd.DataFrame, grid: pd.DatetimeIndex) -> pd.DataFrame:
    """Configured traffic fraction of each experiment arm per bucket of ``grid`` (``[T, arms]``).

    ``experiments`` holds one (model, segment)'s rows; a row holds from its
    ``ts`` until the next row of the same arm, 0 before an arm's first row.
    """
    if experiments.empty:
        return pd.DataFrame(index=grid)
    arms = experiments.pivot_table(index="ts", columns="experiment_id", values="traffic_fraction",
                                   aggfunc="last")
    steps = arms.ffill()
    return steps.reindex(steps.index.union(grid)).ffill().reindex(grid).fillna(0.0)


def traffic_changes(experiments: pd.DataFrame) -> pd.DataFrame:
    """Every change of an arm's traffic fraction (:data:`CHANGE_COLUMNS`)."""
    rows = experiments.sort_values(["experiment_id", "segment", "ts"], kind="stable")
    before = rows.groupby(["experiment_id", "segment"])["traffic_fraction"].shift(fill_value=0.0)
    changed = rows.assign(before=before, after=rows["traffic_fraction"])
    changed = changed[changed["before"] != changed["after"]]
    return changed[CHANGE_COLUMNS].sort_values("ts", ignore_index=True)


def peer_gap(quality: pd.DataFrame, hours: pd.DatetimeIndex) -> pd.DataFrame:
    """How much worse each snapshot's loss is than its peers' on the same ``hours``.

    ``quality`` is :func:`~hawkeye_dagster.analysis.model_isolation.bucket_quality`
    by ``snapshot_id``. In each bucket a snapshot's mean loss is compared with
    the pooled loss of the model's other snapshots; the differences are
    averaged with the snapshot's labelled rows ``n_t`` as weights (so an arm
    with a few percent of traffic still counts, over many hours):
    ``gap = sum(n_t d_t) / sum(n_t)``, with variance
    ``sum(n_t^2 (1/n_t + 1/m_t)) sigma^2 / sum(n_t)^2`` (``m_t`` the peers'
    labelled rows, ``sigma^2`` the pooled per-row loss variance).

    Returns one row per snapshot: ``gap`` (in loss units, positive when worse
    than its peers), its standard error ``se`` and ``z = gap / se``; NaN for a
    snapshot that never served beside a peer with labels.
    """
    part = quality[quality["ts"].isin(hours) & (quality["n_labeled"] > 0)]
    if part.empty:
        return pd.DataFrame(columns=["gap", "se", "z"], dtype=float)
    wide = part.pivot_table(index="ts", columns="snapshot_id", values=["loss", "n_labeled"],
                            aggfunc="first")
    loss, n = wide["loss"], wide["n_labeled"].fillna(0.0)
    loss_sum = (loss * n).fillna(0.0)
    others_n = -n.sub(n.sum(axis=1), axis=0)
    others = -loss_sum.sub(loss_sum.sum(axis=1), axis=0) / others_n.where(others_n > 0)
    usable = (n > 0) & (others_n > 0)
    w = n.where(usable, 0.0)
    weight = w.sum()
    gap = ((loss - others) * w).where(usable).sum() / weight.where(weight > 0)
    sigma2 = np.average(part["loss_var"].fillna(0.0), weights=part["n_labeled"])
    per_bucket = w**2 * (1 / n.where(usable) + 1 / others_n.where(usable))
    variance = per_bucket.sum() * sigma2 / weight**2
    se = np.sqrt(variance.where(variance > 0))
    return pd.DataFrame({"gap": gap, "se": se, "z": gap / se})


def isolate_snapshots(quality: pd.DataFrame, experiments: pd.DataFrame, grid: pd.DatetimeIndex,
                      onset: pd.Timestamp, end: pd.Timestamp, *, min_z: float = 3.0,
                      lead: pd.Timedelta = pd.Timedelta("24h"), min_share: float = 0.25,
                      min_share_growth: float = 0.1) -> RolloutFinding:
    """Split one model's degradation in one segment between its snapshots and what they share.

    ``quality`` is :func:`~hawkeye_dagster.analysis.model_isolation.bucket_quality`
    by ``snapshot_id`` over ``grid`` (buckets before the onset included);
    ``experiments`` the model's rows in the segment. A rollout usually starts
    with a small share that barely moves the top line, so the incident's
    hours run from ``lead`` before the onset to the end of the excursion;
    "before" is everything earlier.

    Per snapshot (:data:`SNAPSHOT_COLUMNS`): ``first_seen``, ``share_before``
    and ``share_during`` (of the model's samples), ``loss_before/during``,
    ``nan_fraction`` (during), ``peer_z_before``/``peer_gap``/``peer_z``
    (:func:`peer_gap` before / during), ``self_z`` (its own degradation
    during the excursion against its like hours before the onset, ``mean *
    sqrt(k)`` of :func:`~hawkeye_dagster.analysis.model_isolation.degradation_z`;
    NaN with less than a day of history); ``own_change``, ``loss_during -
    loss_before``; and ``contribution``, the part of the model's loss
    increase ``delta`` (row-weighted, before to during) it carries by being
    served instead of the snapshots serving beside it in the incident's
    hours: ``share_during * (loss_during - their pooled loss_during)`` (a new
    snapshot serving alone: against the model's loss before).

    A snapshot carries the degradation when it is worse than its peers on
    the same hours (``peer_z >= 2/3 min_z``), or when its contribution is at
    least ``min_share`` of ``delta`` and at least the loss the other
    snapshots lost against their own past (a shared cause hits every row),
    the same-hours comparison does not contradict it (within 3 standard
    errors), and it did not lose more against its own past than it is worse
    than its peers (then what changed came while it served). Verdict: carriers are the suspects (``snapshot``, largest
    contribution first); else a degradation significant in some snapshot's
    own history (``self_z >= min_z``) is shared, ``all_snapshots``; else
    ``none``. A suspect
    established before the incident's hours whose share grew by at least
    ``min_share_growth`` makes its arm, ramped up in those hours, the
    ``traffic_experiment``.
    """
    start = onset - lead
    during_mask = (grid >= start) & (grid <= end)
    before_mask = grid < start
    table = _per_snapshot(quality, grid, during_mask, before_mask)
    table["peer_z_before"] = peer_gap(quality, grid[before_mask])["z"].reindex(table.index)
    paired = peer_gap(quality, grid[during_mask]).reindex(table.index)
    table["peer_gap"], table["peer_z"] = paired["gap"], paired["z"]
    table["self_z"] = [_self_z(quality[quality["snapshot_id"] == s], grid, onset, end, lead)
                       for s in table.index]
    arms = experiments.groupby("snapshot_id")["experiment_id"].agg(lambda e: sorted(set(e)))
    table["experiments"] = [arms.get(s, []) for s in table.index]

    model_before = _mean_loss(table, "before")
    delta = _mean_loss(table, "during") - model_before
    new = table["first_seen"] >= start
    peers = _others_mean(table["loss_during"], table["labeled_during"])
    excess = table["loss_during"] - peers.where(peers.notna(), np.where(new, model_before, np.nan))
    table["contribution"] = (table["share_during"] * excess).fillna(0.0)
    change = table["loss_during"] - table["loss_before"]
    table["own_change"] = change
    shared = _others_mean(change, table["labeled_during"].where(change.notna(), 0.0)).fillna(0.0)
    # the same-hours comparison must not contradict the excess over the period's peers
    consistent = paired["gap"].isna() | ((excess - paired["gap"]).abs() <= 3 * paired["se"])
    # ... and a snapshot that lost more against its own past than it is worse than its peers
    # was hit by something that changed while it served, not by being itself
    steady = change.isna() | (change < excess)
    carries = ((table["peer_z"] >= min_z * 2 / 3)
               | ((delta > 0) & consistent & steady & (table["contribution"] >= shared)
                  & (table["contribution"] >= min_share * delta)))
    table = table.reset_index()

    carriers = table[(table["share_during"] > 0) & carries.to_numpy()]
    if len(carriers):
        verdict = "snapshot"
        suspects = list(carriers.sort_values("contribution", ascending=False)["snapshot_id"])
    elif delta > 0 and (table["self_z"] >= min_z).any():
        verdict, suspects = "all_snapshots", []
    else:
        verdict, suspects = "none", []

    changes = traffic_changes(experiments)
    changes = changes[(changes["ts"] >= start) & (changes["ts"] <= end)]
    traffic_experiment = None
    if suspects:
        top = table.set_index("snapshot_id").loc[suspects[0]]
        grew = top["share_during"] - top["share_before"] >= min_share_growth
        if top["first_seen"] < start and grew:
            ramps = changes[(changes["snapshot_id"] == suspects[0])
                            & (changes["after"] > changes["before"])]
            traffic_experiment = ramps["experiment_id"].iloc[0] if len(ramps) else None
    previous_snapshot = _incumbent(quality, grid[(grid >= start - lead) & before_mask], suspects)
    return RolloutFinding(verdict, suspects, float(delta), table[SNAPSHOT_COLUMNS],
                          changes.reset_index(drop=True), traffic_experiment, previous_snapshot,
                          traffic_timeline(experiments, grid))


def _others_mean(values: pd.Series, weights: pd.Series) -> pd.Series:
    """Per row, the weighted mean of ``values`` over the other rows (NaN without any)."""
    total = (values.fillna(0.0) * weights).sum()
    others = weights.sum() - weights
    return (total - values.fillna(0.0) * weights) / others.where(others > 0)


def _mean_loss(table: pd.DataFrame, when: str) -> float:
    """The model's loss over all its snapshots, weighted by labelled rows."""
    n = table[f"labeled_{when}"]
    return float((table[f"loss_{when}"].fillna(0.0) * n).sum() / n.sum()) if n.sum() else np.nan


def _per_snapshot(quality: pd.DataFrame, grid: pd.DatetimeIndex, during_mask: np.ndarray,
                  before_mask: np.ndarray) -> pd.DataFrame:
    """First bucket served, shares, losses and NaN fraction of each snapshot before and during."""
    q = quality.assign(during=quality["ts"].isin(grid[during_mask]),
                       before=quality["ts"].isin(grid[before_mask]),
                       loss_sum=quality["loss"].fillna(0.0) * quality["n_labeled"])

    def sums(mask: str) -> pd.DataFrame:
        return q[q[mask]].groupby("snapshot_id")[["n", "n_labeled", "nan_count", "loss_sum"]].sum()

    before, during = sums("before"), sums("during")
    index = pd.Index(sorted(q["snapshot_id"].unique()), name="snapshot_id")
    before, during = before.reindex(index, fill_value=0), during.reindex(index, fill_value=0)
    return pd.DataFrame({
        "first_seen": q.groupby("snapshot_id")["ts"].min().reindex(index),
        "share_before": before["n"] / max(before["n"].sum(), 1),
        "share_during": during["n"] / max(during["n"].sum(), 1),
        "loss_before": before["loss_sum"] / before["n_labeled"].replace(0, np.nan),
        "loss_during": during["loss_sum"] / during["n_labeled"].replace(0, np.nan),
        "nan_fraction": during["nan_count"] / during["n"].replace(0, np.nan),
        "labeled_before": before["n_labeled"], "labeled_during": during["n_labeled"],
    }, index=index)


def _incumbent(quality: pd.DataFrame, hours: pd.DatetimeIndex, exclude: list[str]) -> str | None:
    """The snapshot with the most samples in ``hours`` among those not in ``exclude``."""
    rows = quality[quality["ts"].isin(hours) & ~quality["snapshot_id"].isin(exclude)]
    counts = rows.groupby("snapshot_id")["n"].sum()
    return counts.idxmax() if len(counts) else None


def _self_z(quality: pd.DataFrame, grid: pd.DatetimeIndex, onset: pd.Timestamp,
            end: pd.Timestamp, history: pd.Timedelta) -> float:
    """A snapshot's own degradation over ``[onset, end]``, NaN with less than ``history`` of
    buckets served before the onset."""
    served_before = quality.loc[quality["ts"] < onset, "ts"].nunique()
    if served_before * pd.Timedelta(grid.freq) < history:
        return np.nan
    d = degradation_z(quality, grid, onset)[(grid >= onset) & (grid <= end)]
    return float(d.mean() * np.sqrt(d.count())) if d.count() else np.nan
