"""From a suspect snapshot to its training: data partitions and training curves.

``snapshots.training_run_id`` leads to the run, the run to its dataset
partitions. Each partition is profiled (row count, label rate and imbalance,
per-feature mean, spread and null fraction) and every statistic is scored
against the same statistic of the neighbouring partitions (robust z: the
neighbours' median and spread plus the statistic's own sampling error), and
the partition's distributions against serving data (train/serve skew: the
Kolmogorov-Smirnov distance per feature, a two-sample z for the label rate).
The run's loss and gradient-norm curves are checked for divergence, gradient
explosion and a stalled start, each with the step where it began.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.robust import MAD_TO_SD
from hawkeye_dagster.errors import UnknownIdError

#: neighbouring partitions on each side that a partition is compared with
NEIGHBOURS = 3
#: |z| of a partition statistic against its neighbours beyond which it is flagged
Z_THRESHOLD = 5.0
#: train/serve Kolmogorov-Smirnov distance beyond which a feature is skewed, when also
#: significant at SKEW_ALPHA (small serving samples differ by chance)
KS_THRESHOLD = 0.25
SKEW_ALPHA = 1e-3
#: |z| of the training label rate against serving labels beyond which labels are skewed
LABEL_SKEW_Z = 5.0
#: a gradient norm this many times its running median has exploded
EXPLOSION_FACTOR = 10.0
#: a smoothed loss this far (relative) above its best, to the end, has diverged
DIVERGENCE_RATIO = 0.5
#: a run whose loss improved by less than this (relative) has stalled
STALL_IMPROVEMENT = 0.01

PROFILE_COLUMNS = ("partition", "subject", "stat", "value", "se")
CHECK_COLUMNS = ("partition", "subject", "stat", "value", "neighbour_median", "z", "flagged",
                 "reason")
SKEW_COLUMNS = ("partition", "subject", "stat", "train", "serving", "distance", "p_value",
                "flagged", "reason")
CURVE_COLUMNS = ("training_run_id", "steps", "first_loss", "best_loss", "final_loss",
                 "diverged", "divergence_step", "exploded", "explosion_step", "stalled",
                 "plateau_step", "healthy", "reason")


@dataclass(frozen=True)
class TrainingLineage:
    """The training run behind a snapshot and the dataset partitions it read."""

    training_run_id: str
    dataset_id: str
    partitions: tuple[str, ...]

    @property
    def partition_keys(self) -> list[str]:
        """``dataset_id/partition`` keys, as in the report's ``training_partitions``."""
        return [partition_key(self.dataset_id, p) for p in self.partitions]


def partition_key(dataset_id: str | pd.Series, partition: str | pd.Series) -> str | pd.Series:
    """``dataset_id/partition``; works on strings and on pandas Series alike."""
    return dataset_id + "/" + partition


def split_partition_key(key: str) -> tuple[str, str]:
    """``dataset_id/partition`` -> ``(dataset_id, partition)``; ids never hold ``/``."""
    dataset_id, sep, partition = key.partition("/")
    if not sep or not dataset_id or not partition or "/" in partition:
        raise ValueError(f"not a training partition key (dataset_id/partition): {key!r}")
    return dataset_id, partition


def training_lineage(snapshots: pd.DataFrame, training_runs: pd.DataFrame,
                     snapshot_id: str) -> TrainingLineage | None:
    """Snapshot -> training run -> dataset partitions; ``None`` when the snapshot names no run
    or the run is not in ``training_runs``. Raises :class:`UnknownIdError` for an unknown snapshot."""
    row = snapshots[snapshots["snapshot_id"] == snapshot_id]
    if row.empty:
        raise UnknownIdError(f"snapshot {snapshot_id!r} is not in the snapshots table")
    run_id = row["training_run_id"].iloc[0]
    run = training_runs[training_runs["training_run_id"] == run_id] if isinstance(run_id, str) \
        else training_runs.iloc[:0]
    if run.empty:
        return None
    return TrainingLineage(run_id, run["dataset_id"].iloc[0],
                           tuple(sorted(run["partitions"].iloc[0])))


def neighbour_partitions(all_partitions: Sequence[str], partitions: Sequence[str],
                         k: int = NEIGHBOURS) -> list[str]:
    """``partitions`` and up to ``k`` partitions on either side of each, in order."""
    ordered = sorted(set(all_partitions) | set(partitions))
    index = np.searchsorted(ordered, sorted(set(partitions)))
    around = np.unique(np.clip(index[:, None] + np.arange(-k, k + 1), 0, len(ordered) - 1))
    return [ordered[i] for i in around]


def partition_profiles(data: pd.DataFrame, features: Sequence[str], task: str) -> pd.DataFrame:
    """Statistics of each training partition and their sampling errors, in long form.

    ``data`` holds ``partition``, ``label`` and the ``features`` columns.
    Returns ``PROFILE_COLUMNS`` rows: per partition ``rows``; per feature (and
    for the label) ``mean`` (the label's is its ``rate``), ``std`` (not for
    binary labels) and ``null_fraction``; for binary labels the ``imbalance``
    (the minority class's share). ``se`` is each statistic's standard error
    from its own partition: ``std/sqrt(n)`` for means, the delta-method error
    ``sqrt((m4 - var^2) / n) / (2 std)`` for standard deviations (right for
    heavy tails too), binomial errors for shares, ``sqrt(rows)`` for counts.
    """
    values = data[[*features, "label"]].astype(float)
    by = data["partition"]
    grouped = values.groupby(by, sort=True)
    n = grouped.count().clip(lower=1)
    rows = grouped.size().astype(float)
    mean, var = grouped.mean(), grouped.var(ddof=0)
    m4 = ((values - grouped.transform("mean")) ** 4).groupby(by, sort=True).mean()
    std = np.sqrt(var)
    null = 1.0 - n.div(rows, axis=0)
    stats = {"mean": (mean, std / np.sqrt(n)),
             "std": (std, np.sqrt((m4 - var**2).clip(lower=0) / n) / (2 * std)),
             "null_fraction": (null, _share_error(null, null * 0 + rows.to_numpy()[:, None]))}
    if task == "binary_classification":
        minority = np.fmin(mean[["label"]], 1 - mean[["label"]])
        stats["imbalance"] = (minority, _share_error(minority, n[["label"]]))
        stats["mean"][1]["label"] = _share_error(mean["label"], n["label"])
    parts = [pd.DataFrame({"value": value.stack(future_stack=True),
                           "se": se.stack(future_stack=True)}).assign(stat=stat)
             for stat, (value, se) in stats.items()]
    profile = pd.concat(parts).rename_axis(["partition", "subject"]).reset_index()
    is_label = profile["subject"] == "label"
    profile.loc[is_label & (profile["stat"] == "mean"), "stat"] = "rate"
    if task == "binary_classification":
        profile = profile[~(is_label & (profile["stat"] == "std"))]
    counts = pd.DataFrame({"partition": rows.index, "subject": "*", "stat": "rows",
                           "value": rows.to_numpy(), "se": np.sqrt(rows.to_numpy())})
    profile = pd.concat([profile, counts], ignore_index=True)
    return profile.sort_values(["partition", "subject", "stat"], ignore_index=True)[
        list(PROFILE_COLUMNS)]


def _share_error(share, n):
    """Binomial standard error of a share; near 0 or 1 still that of one count in ``n``."""
    return np.sqrt(np.fmax(share * (1 - share), 1 / n) / n)


def neighbour_checks(profile: pd.DataFrame, partitions: Sequence[str] | None = None, *,
                     k: int = NEIGHBOURS, z_threshold: float = Z_THRESHOLD) -> pd.DataFrame:
    """Score each partition's statistics against the same statistics of its ``k`` neighbours each side.

    ``z = (value - median) / sqrt((1.4826 MAD)^2 + se^2)`` over the neighbours'
    values, ``se`` the statistic's sampling error (:func:`partition_profiles`).
    Returns ``CHECK_COLUMNS`` for
    ``partitions`` (default all); ``flagged`` where ``|z| > z_threshold``. With
    no neighbours ``z`` is NaN.
    """
    wide = profile.pivot(index="partition", columns=["subject", "stat"], values="value").sort_index()
    matrix = wide.to_numpy(float)
    shifted = np.full((2 * k, *matrix.shape), np.nan)
    for i, offset in enumerate([*range(-k, 0), *range(1, k + 1)]):  # 2k array shifts, not rows
        if offset < 0:
            shifted[i, -offset:] = matrix[:offset]
        else:
            shifted[i, :-offset] = matrix[offset:]
    with np.errstate(all="ignore"), _quiet():
        median = np.nanmedian(shifted, axis=0)
        mad = MAD_TO_SD * np.nanmedian(np.abs(shifted - median), axis=0)
    checks = pd.DataFrame({
        "partition": np.repeat(wide.index.to_numpy(), wide.shape[1]),
        "subject": np.tile(wide.columns.get_level_values(0), len(wide)),
        "stat": np.tile(wide.columns.get_level_values(1), len(wide)),
        "neighbour_median": median.reshape(-1), "mad": mad.reshape(-1),
    }).merge(profile, on=["partition", "subject", "stat"])
    scale = np.sqrt(checks["mad"] ** 2 + np.nan_to_num(checks["se"]) ** 2)
    scale = np.fmax(scale, 1e-9 * np.fmax(np.abs(checks["neighbour_median"]), 1.0))
    checks["z"] = (checks["value"] - checks["neighbour_median"]) / scale
    checks["flagged"] = checks["z"].abs() > z_threshold
    checks["reason"] = np.where(
        checks["flagged"],
        checks["subject"] + " " + checks["stat"] + " " + checks["value"].map("{:.4g}".format)
        + " vs neighbours' " + checks["neighbour_median"].map("{:.4g}".format)
        + " (z=" + checks["z"].map("{:.1f}".format) + ")", "")
    if partitions is not None:
        checks = checks[checks["partition"].isin(set(partitions))]
    return checks[list(CHECK_COLUMNS)].reset_index(drop=True)


def train_serve_skew(train: pd.DataFrame, serving: pd.DataFrame, features: Sequence[str],
                     task: str, *, ks_threshold: float = KS_THRESHOLD,
                     label_z: float = LABEL_SKEW_Z) -> pd.DataFrame:
    """Each training partition's distributions against serving data (``SKEW_COLUMNS``).

    Features: two-sample Kolmogorov-Smirnov distance between the partition's
    and the served values (NaN ignored), flagged above ``ks_threshold`` when
    its p-value is below :data:`SKEW_ALPHA`. Label:
    the training rate (mean for regression) against the labelled serving rows,
    ``distance`` a two-sample z, flagged above ``label_z``.
    """
    from scipy import stats  # imported here: the partition sensor imports this module

    parts = []
    served = serving[list(features)].to_numpy(float)
    served_label = serving["label"].dropna().to_numpy(float)
    for partition, rows in train.groupby("partition", sort=True):  # partitions, not features
        mine = rows[list(features)].to_numpy(float)
        with np.errstate(all="ignore"), _quiet():
            ks = stats.ks_2samp(mine, served, axis=0, nan_policy="omit")
        parts.append(pd.DataFrame({
            "partition": partition, "subject": list(features), "stat": "distribution",
            "train": np.nanmean(mine, axis=0), "serving": np.nanmean(served, axis=0),
            "distance": np.atleast_1d(ks.statistic), "p_value": np.atleast_1d(ks.pvalue)}))
        labels = rows["label"].dropna().to_numpy(float)
        if len(labels) > 1 and len(served_label) > 1:
            a, b = labels.mean(), served_label.mean()
            var = (labels.var(ddof=1) / len(labels) + served_label.var(ddof=1) / len(served_label))
            parts.append(pd.DataFrame({"partition": [partition], "subject": ["label"],
                                       "stat": ["rate" if task == "binary_classification"
                                                else "mean"], "train": [a], "serving": [b],
                                       "distance": [(a - b) / np.sqrt(var) if var > 0 else 0.0],
                                       "p_value": [np.nan]}))
    skew = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SKEW_COLUMNS)
    is_label = skew["subject"] == "label"
    skew["flagged"] = np.where(is_label, skew["distance"].abs() > label_z,
                               (skew["distance"] > ks_threshold) & (skew["p_value"] < SKEW_ALPHA))
    skew["reason"] = np.where(
        skew["flagged"],
        skew["subject"] + np.where(is_label, " rate/mean ", " distribution ")
        + "train " + skew["train"].map("{:.4g}".format) + " vs serving "
        + skew["serving"].map("{:.4g}".format) + np.where(is_label, " (z=", " (KS=")
        + skew["distance"].map("{:.2f}".format) + ")", "")
    return skew[list(SKEW_COLUMNS)]


def rank_partitions(checks: pd.DataFrame, skew: pd.DataFrame) -> pd.DataFrame:
    """One row per partition: ``score`` (largest |z| against neighbours), ``flagged`` and the
    reasons of both checks, most suspect first."""
    flagged = pd.concat([checks[["partition", "reason"]][checks["flagged"]],
                         skew[["partition", "reason"]][skew["flagged"]]])
    reasons = flagged.groupby("partition")["reason"].agg("; ".join)
    score = checks.assign(z=checks["z"].abs()).groupby("partition")["z"].max()
    ranked = pd.DataFrame({"score": score}).join(reasons, how="outer")
    ranked["flagged"] = ranked["reason"].notna()
    ranked["reason"] = ranked["reason"].fillna("")
    ranked = ranked.rename_axis("partition").reset_index()
    return ranked.sort_values(["flagged", "score"], ascending=False, ignore_index=True)


@dataclass(frozen=True)
class PartitionDiagnosis:
    """Training partitions checked against their neighbours and against serving data."""

    #: the partitions' statistics against their neighbours (``CHECK_COLUMNS``)
    checks: pd.DataFrame
    #: their distributions against serving data (``SKEW_COLUMNS``)
    skew: pd.DataFrame
    #: one row per partition, most suspect first (:func:`rank_partitions`), keyed
    #: ``dataset_id/partition`` as in the report's ``training_partitions``
    ranked: pd.DataFrame


def diagnose_partitions(train: pd.DataFrame, partitions: Sequence[str], serving: pd.DataFrame,
                        features: Sequence[str], task: str, dataset_id: str) -> PartitionDiagnosis:
    """Check ``partitions`` of a dataset against their neighbours and serving data.

    ``train`` holds ``partition``, ``label`` and ``features`` rows of the
    partitions and their neighbours (:func:`neighbour_partitions`);
    ``serving`` holds recent served ``features`` and ``label``.
    """
    checks = neighbour_checks(partition_profiles(train, features, task), partitions)
    skew = train_serve_skew(train[train["partition"].isin(set(partitions))], serving, features,
                            task)
    ranked = rank_partitions(checks, skew)
    ranked["partition"] = partition_key(dataset_id, ranked["partition"])
    return PartitionDiagnosis(checks, skew, ranked)


def _onset(above: np.ndarray, end: int) -> int:
    """Start of the run of ``above`` values that ends at index ``end``."""
    before = np.flatnonzero(~above[:end + 1])
    return int(before[-1] + 1) if len(before) else 0


def curve_checks(metrics: pd.DataFrame, *, explosion_factor: float = EXPLOSION_FACTOR,
                 divergence_ratio: float = DIVERGENCE_RATIO,
                 stall_improvement: float = STALL_IMPROVEMENT) -> pd.DataFrame:
    """Training-curve health per run of ``training_metrics`` (``CURVE_COLUMNS``).

    - divergence: a non-finite loss, or a smoothed loss (running median of
      ~2 % of the steps) that ends more than ``divergence_ratio`` above its
      best (relative); it began right after the smoothed loss's best step;
    - gradient explosion: a non-finite gradient norm, or at least two steps
      whose norm exceeds ``explosion_factor`` times the median of all earlier
      steps; it began where the norm left the earlier steps' normal band
      (median + 3 scaled MADs) on its way to the first such step;
    - a stall: the best loss is less than ``stall_improvement`` (relative)
      below the first; ``plateau_step`` is where the smoothed loss came within
      ``stall_improvement`` of its best, stalled or not.

    ``healthy`` means neither divergence, explosion nor stall.
    """
    rows = [_curve(run, part.sort_values("step"), explosion_factor, divergence_ratio,
                   stall_improvement)
            for run, part in metrics.groupby("training_run_id", sort=True)]  # runs, not steps
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def _curve(run: str, part: pd.DataFrame, explosion_factor: float, divergence_ratio: float,
           stall_improvement: float) -> dict:
    step = part["step"].to_numpy()
    loss = part["loss"].to_numpy(float)
    grad = part["grad_norm"].to_numpy(float)
    smooth = pd.Series(loss).rolling(max(3, len(loss) // 50), min_periods=1).median().to_numpy()
    finite_smooth = np.where(np.isfinite(smooth), smooth, np.inf)
    best_at = int(np.argmin(finite_smooth))
    best = finite_smooth[best_at]
    first = smooth[0]
    early = loss[:best_at + 1][np.isfinite(loss[:best_at + 1])]
    noise = MAD_TO_SD * np.median(np.abs(np.diff(early))) if len(early) > 2 else 0.0
    loss_bad = ~np.isfinite(loss)
    diverged = bool(loss_bad.any()
                    or smooth[-1] > best + max(divergence_ratio * abs(best), 3 * noise)
                    or not np.isfinite(smooth[-1]))
    divergence_step = int(step[min(best_at + 1, len(step) - 1)]) if diverged else None
    with np.errstate(all="ignore"):
        earlier = pd.Series(grad).expanding(min_periods=5).median().shift().to_numpy()
        spread = MAD_TO_SD * pd.Series(np.abs(grad - earlier)).expanding(min_periods=5).median() \
            .shift().to_numpy()
        grad_bad = ~np.isfinite(grad)
        high = (grad > explosion_factor * earlier) | grad_bad
    exploded = bool(high.sum() >= 2 or grad_bad.any())
    explosion_step = None
    if exploded:
        detect = int(np.argmax(high))
        normal = grad <= earlier[detect] + 3 * np.nan_to_num(spread[detect])
        explosion_step = int(step[_onset(~normal, detect)])
    improvement = (first - best) / abs(first) if np.isfinite(first) and first != 0 else np.nan
    stalled = bool(np.isfinite(improvement) and improvement < stall_improvement)
    flat = np.isfinite(smooth) & (smooth <= best + stall_improvement * abs(best))
    plateau_step = int(step[np.argmax(flat)]) if flat.any() else None
    reasons = []
    if diverged:
        reasons.append(f"loss diverged from step {divergence_step}")
    if exploded:
        reasons.append(f"gradient norm exploded from step {explosion_step}")
    if stalled:
        reasons.append(f"loss improved only {improvement:.1%}")
    return {"training_run_id": run, "steps": len(step), "first_loss": loss[0],
            "best_loss": best, "final_loss": loss[-1], "diverged": diverged,
            "divergence_step": divergence_step, "exploded": exploded,
            "explosion_step": explosion_step, "stalled": stalled, "plateau_step": plateau_step,
            "healthy": not (diverged or exploded or stalled), "reason": "; ".join(reasons)}


@contextmanager
def _quiet():
    """Silence numpy/scipy warnings about all-NaN slices (no neighbours, empty columns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
