"""Pictures of the features analyses for the UI, as PNG bytes (matplotlib, no global state)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hawkeye_dagster.analysis.feature_stats import PREDICTION, FeatureStats, ReferenceProfile


def shifted_features_plot(current: FeatureStats, reference: ReferenceProfile,
                          drift: pd.DataFrame, top: int = 6) -> bytes:
    """Reference vs current share of values per bin for the ``top`` columns by PSI.

    ``drift`` is :func:`~hawkeye_dagster.analysis.drift.drift_table` of ``current``.
    """
    shown = drift.sort_values("psi", ascending=False).head(top)
    cur = current.select(columns=shown["column"]).pooled()
    ref = reference.stats.select(columns=shown["column"]).pooled()
    figure = Figure(figsize=(10, 1.8 * max(len(shown), 1)))
    for i, (column, psi) in enumerate(zip(shown["column"], shown["psi"])):
        axes = figure.add_subplot(max(len(shown), 1), 1, i + 1)
        bins = np.arange(ref.hist_count.shape[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            for offset, pooled, label in ((-0.2, ref, "reference"), (0.2, cur, "current")):
                counts = pooled.hist_count[i]
                axes.bar(bins + offset, counts / counts.sum(), 0.4, label=label)
        axes.set_title(f"{column}: PSI {psi:.3g}", fontsize=9, loc="left")
        axes.set_xticks([])
        axes.legend(fontsize=7, loc="upper right")
    axes.set_xlabel("reference bins (equal-frequency)")
    return _png(figure)


def ranking_plot(ranking: pd.DataFrame, top: int = 15) -> bytes:
    """Scores of the ``top`` ranked features, significant ones highlighted."""
    shown = ranking.head(top).iloc[::-1]
    figure = Figure(figsize=(8, 0.35 * max(len(shown), 2) + 1))
    axes = figure.add_subplot()
    colors = np.where(shown["significant"], "tab:red", "tab:gray")
    axes.barh(shown["feature"].astype(str), shown["score"], color=colors)
    axes.set_xlabel("share of the explained prediction shift (red: significant)")
    return _png(figure)


def hourly_shift_plot(stats: FeatureStats, edges: np.ndarray, ranking: pd.DataFrame,
                      onset: pd.Timestamp, end: pd.Timestamp, top: int = 5) -> bytes:
    """The predictions' hourly mean and, for each of the ``top`` ranked features, the hourly
    series the ranking found shifted (its ``view``: mean, std, null fraction or PSI against the
    hours before ``onset``), with the baseline median and the anomaly window marked.

    ``stats`` covers baseline and window hours of the ranked features and ``prediction`` on
    ``edges`` (one row per column); ``ranking`` is
    :func:`~hawkeye_dagster.analysis.feature_ranking.rank_features`'s table.
    """
    # the very series the ranking judged (feature isolation's hourly views)
    from hawkeye_dagster.analysis.feature_isolation import view_series

    hours = stats.hours
    baseline = np.asarray(hours < onset)
    series = view_series(stats, ReferenceProfile(edges, stats.select(hours=baseline)))
    column = {c: i for i, c in enumerate(stats.columns)}
    shown = ranking.head(top)
    panels = [(PREDICTION, "mean", "predictions", "tab:purple")] + [
        (row.feature, row.view, f"{row.feature}: z {row.z:+.1f}, p {row.p_value:.2g}"
         + (" (significant)" if row.significant else ""),
         "tab:red" if row.significant else "tab:blue")
        for row in shown.itertuples()]
    # 1200 px wide at 100 dpi: the width of Dagster's markdown dialog
    figure = Figure(figsize=(12, 2.0 * len(panels) + 0.6))
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, view, title, color) in zip(axes, panels):
        values = series[view][:, column[name]]
        ax.plot(hours, values, lw=1.4, color=color)
        with np.errstate(all="ignore"):
            ax.axhline(np.nanmedian(values[baseline]), color="gray", ls="--", lw=1,
                       label="baseline median")
        ax.axvspan(onset, end, color="tab:red", alpha=0.1, label="anomaly window")
        ax.set_title(title, loc="left", fontsize=12)
        ax.set_ylabel(f"hourly {view.replace('_', ' ')}", fontsize=11)
        ax.tick_params(labelsize=10)
    axes[0].legend(loc="upper left", fontsize=10)
    return _png(figure, dpi=100)


def importance_plot(table: pd.DataFrame, top: int = 15) -> bytes:
    """Importance ratio (log scale) with its bootstrap interval for the ``top`` changed features
    of :func:`~hawkeye_dagster.analysis.ablation.importance_change`.

    Ratios of 0, inf or NaN (no importance under one snapshot or both) have no place on a log
    scale and are left out; an unbounded interval end is drawn as no bar.
    """
    drawable = np.isfinite(table["ratio"].to_numpy(float)) & (table["ratio"] > 0).to_numpy()
    shown = table[drawable].head(top).iloc[::-1]
    figure = Figure(figsize=(8, 0.35 * max(len(shown), 2) + 1))
    axes = figure.add_subplot()
    y = np.arange(len(shown))
    ratio = shown["ratio"].to_numpy(float)
    bounds = shown[["ratio_low", "ratio_high"]].to_numpy(float)
    bounds = np.where(np.isfinite(bounds) & (bounds > 0), bounds, ratio[:, None])
    error = np.abs(np.vstack([ratio - bounds[:, 0], bounds[:, 1] - ratio]))
    axes.errorbar(ratio, y, xerr=error, fmt="o", color="tab:gray", ecolor="tab:gray")
    axes.scatter(ratio[shown["significant"].to_numpy()], y[shown["significant"].to_numpy()],
                 color="tab:red", zorder=3)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_yticks(y, shown["feature"].astype(str))
    axes.set_xlabel("importance vs the previous stable snapshot (red: significant)")
    return _png(figure)


def _png(figure: Figure, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
