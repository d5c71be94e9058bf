"""The ranked feature list: which input features explain a model's prediction anomaly.

Three kinds of evidence are combined per feature:

- correlation (:mod:`~hawkeye_dagster.analysis.feature_isolation`): the
  feature's hourly distribution shifted significantly in the degradation
  window and moved together with the prediction distribution;
- contribution (:func:`~hawkeye_dagster.analysis.ablation.contribution_shift`):
  under the serving snapshot, the feature's ablation attribution on window
  rows differs from that on baseline rows, i.e. its new values account for a
  share of the prediction shift (this separates a feature that matters from
  one that merely shifted at the same time);
- importance change (:func:`~hawkeye_dagster.analysis.ablation.importance_change`):
  the serving snapshot leans on the feature much more or less than the
  previous operationally stable snapshot did.

A feature is significant when the predictions moved, and either it shifted
and explains the shift (a significant contribution share, or without a
loadable snapshot a strong correlation), or its importance changed
significantly. p-values are Bonferroni-adjusted over features and combined
with Fisher's method; the score is the feature's share of the explained
prediction shift (of the correlation evidence without a snapshot).

This module combines the evidence (:func:`combine_evidence`); reading it from a lake is
:func:`hawkeye_dagster.gather.feature_ranking.rank_features`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from hawkeye_dagster.analysis.feature_isolation import Isolation
from hawkeye_dagster.analysis.feature_stats import N_BINS

RANKING_COLUMNS = ("feature", "score", "p_value", "significant", "reasons", "onset", "view", "z",
                   "corr", "share", "importance_ratio")


@dataclass(frozen=True)
class RankingSettings:
    """Thresholds and sample sizes of :func:`rank_features`.

    Attributes
    ----------
    alpha : significance level, after Bonferroni adjustment over features.
    min_corr : smallest |correlation| with the predictions that explains, when
        no snapshot can be run.
    min_share : smallest share of the prediction shift a feature must account for.
    min_ratio : an importance change counts from this ratio (or its inverse) on.
    sample_rows : rows sampled from each of baseline and window for ablation.
    edge_rows, edge_days : rows sampled from the last ``edge_days`` baseline
        days to place the histogram bin edges.
    n_bins : histogram bins.
    baseline : history before the onset used when no window is given.
    seed : seed of the row sampling and the bootstrap.
    """

    alpha: float = 0.01
    min_corr: float = 0.5
    min_share: float = 0.05
    min_ratio: float = 1.5
    sample_rows: int = 10_000
    edge_rows: int = 100_000
    edge_days: int = 2
    n_bins: int = N_BINS
    baseline: pd.Timedelta = pd.Timedelta("7D")
    seed: int = 0


def combine_evidence(isolation: Isolation, contributions: pd.DataFrame | None = None,
                     importance: pd.DataFrame | None = None, *,
                     reference_snapshot: str | None = None,
                     settings: RankingSettings = RankingSettings()) -> pd.DataFrame:
    """Rank features from correlation, contribution and importance-change evidence.

    Parameters
    ----------
    isolation : Isolation
        From :func:`~hawkeye_dagster.analysis.feature_isolation.isolate_features`.
    contributions : DataFrame, optional
        From :func:`~hawkeye_dagster.analysis.ablation.contribution_shift`.
    importance : DataFrame, optional
        From :func:`~hawkeye_dagster.analysis.ablation.importance_change`, against
        ``reference_snapshot``.

    Returns
    -------
    DataFrame
        :data:`RANKING_COLUMNS`, most explanatory first; ``reasons`` is one
        readable string. ``attrs["explained"]`` says whether any feature
        explains the anomaly and ``attrs["summary"]`` says it in words.
    """
    a = settings.alpha
    iso = isolation.features.set_index("feature")
    n = len(iso)
    p_iso = np.minimum(iso["p_value"] * n, 1.0)
    shifted = p_iso < a
    iso_strength = (iso["z"].abs() * iso["corr"].abs()).fillna(0.0)
    pvalues = [p_iso]
    if contributions is not None:
        con = contributions.set_index("feature").reindex(iso.index)
        total = con["shift"].abs().sum()
        share = con["shift"] / total if total > 0 else con["shift"] * 0.0
        p_con = np.minimum(con["p_value"].fillna(1.0) * n, 1.0)
        explains = (p_con < a) & (share.abs() >= settings.min_share)
        score = share.abs().fillna(0.0)
        pvalues.append(p_con)
    else:
        share = pd.Series(np.nan, index=iso.index)
        explains = iso["corr"].abs() >= settings.min_corr
        total = iso_strength.sum()
        score = iso_strength / total if total > 0 else iso_strength
    ratio = pd.Series(np.nan, index=iso.index)
    changed = pd.Series(False, index=iso.index)
    if importance is not None:
        imp = importance.set_index("feature").reindex(iso.index)
        ratio = imp["ratio"]
        changed = imp["significant"].fillna(False).astype(bool)
        pvalues.append(np.minimum(imp["p_value"].fillna(1.0) * n, 1.0))
    predictions_moved = isolation.prediction["p_value"] < a
    significant = predictions_moved & ((shifted & explains) | changed)
    combined = sps.combine_pvalues(np.clip(np.stack(pvalues), 1e-300, 1.0), method="fisher",
                                   axis=0).pvalue
    reasons = [
        "; ".join(r for r in parts if r)
        for parts in zip(_shift_reasons(iso, isolation.prediction["view"]),
                         _share_reasons(share), _importance_reasons(ratio, reference_snapshot))
    ]
    table = pd.DataFrame({
        "feature": iso.index, "score": score.to_numpy(), "p_value": combined,
        "significant": significant.to_numpy(), "reasons": reasons,
        "onset": iso["onset"].to_numpy(), "view": iso["view"].to_numpy(), "z": iso["z"].to_numpy(),
        "corr": iso["corr"].to_numpy(), "share": share.to_numpy(),
        "importance_ratio": ratio.to_numpy(),
    }).sort_values(["significant", "score", "z"], ascending=False, key=_abs_numbers,
                   ignore_index=True)
    table.attrs["explained"] = bool(table["significant"].any())
    table.attrs["summary"] = _summary(table, isolation, a)
    return table


# -- words -----------------------------------------------------------------------------------------


def _shift_reasons(iso: pd.DataFrame, prediction_view: str) -> list[str]:
    return [
        f"{view} shift {z:+.1f} sigma"
        + (f" since {onset:%Y-%m-%d %H:%M}Z" if pd.notna(onset) else "")
        + (f" (corr {corr:.2f} with prediction {prediction_view})" if np.isfinite(corr) else "")
        if abs(z) >= 1 else ""
        for view, z, onset, corr in zip(iso["view"], iso["z"], iso["onset"], iso["corr"])
    ]


def _share_reasons(share: pd.Series) -> list[str]:
    return [f"accounts for {s:.0%} of the prediction shift" if np.isfinite(s) and abs(s) >= 0.005
            else "" for s in share.abs()]


def _importance_reasons(ratio: pd.Series, reference: str | None) -> list[str]:
    return [f"importance x{r:.2g} vs snapshot {reference}" if np.isfinite(r) and r != 1 else ""
            for r in ratio]


def _summary(table: pd.DataFrame, isolation: Isolation, alpha: float) -> str:
    pred = isolation.prediction
    moved = (f"prediction {pred['view']} shifted {pred['z']:+.1f} sigma "
             f"({pred['baseline_value']:.4g} -> {pred['window_value']:.4g})")
    if pred["p_value"] >= alpha:
        return f"the predictions did not shift significantly ({moved}): no feature to explain"
    top = table[table["significant"]]
    if top.empty:
        return f"{moved}; no feature explains it"
    return f"{moved}; {len(top)} feature(s) explain it, first {top['feature'].iloc[0]!r}"


def _abs_numbers(column: pd.Series) -> pd.Series:
    """Sort key: magnitudes for numbers (a z of -5 outranks +3), booleans as they are."""
    return column.abs() if column.dtype.kind in "fi" else column
