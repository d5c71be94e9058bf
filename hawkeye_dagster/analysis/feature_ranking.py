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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from hawkeye_dagster.analysis.ablation import (ablation_attributions, contribution_shift,
                                               importance_change)
from hawkeye_dagster.analysis.feature_isolation import Isolation, isolate_features
from hawkeye_dagster.analysis.feature_stats import N_BINS, ReferenceProfile
from hawkeye_dagster.analysis.model_isolation import QUALITY_COLUMNS
from hawkeye_dagster.analysis.serving_stats import lake_edges, lake_stats, model_features
from hawkeye_dagster.errors import BadSnapshotError, UnknownIdError
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.time_range import TimeRange

RANKING_COLUMNS = ("feature", "score", "p_value", "significant", "reasons", "onset", "view", "z",
                   "corr", "share", "importance_ratio")
_DAY = pd.Timedelta("1D")


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


def rank_features(reader: TelemetryReader, model_id: str, *, onset: pd.Timestamp,
                  end: pd.Timestamp, window: TimeRange | None = None,
                  snapshot_id: str | None = None,
                  settings: RankingSettings = RankingSettings()) -> pd.DataFrame:
    """The ranked features of ``model_id`` for an anomaly from ``onset`` to ``end``, from the lake.

    ``window`` bounds what is read (its start begins the baseline; default
    ``settings.baseline`` before the onset). Serving samples are read a day
    at a time, so memory holds one day plus samples. The snapshot that served
    most of the window's sampled rows (or ``snapshot_id``) is ablated on
    sampled window rows and on sampled baseline rows from the same hours of
    day. If it is not the one that served most of the baseline, its previous
    operationally stable snapshot is ablated on the window rows too
    (importance change). A snapshot that cannot be loaded leaves the
    correlation evidence alone (said in ``attrs["summary"]``).
    """
    onset, end = pd.Timestamp(onset), pd.Timestamp(end)
    start = window.start if window is not None and window.start is not None else \
        onset - settings.baseline
    features = model_features(reader, model_id)
    rng = np.random.default_rng(settings.seed)
    edges = lake_edges(reader, model_id, features,
                       TimeRange(max(start, onset - settings.edge_days * _DAY), onset),
                       n_bins=settings.n_bins, rows=settings.edge_rows, rng=rng)
    span = None if edges is None else lake_stats(
        reader, model_id, features, TimeRange(start, end), edges,
        sample_rows=settings.sample_rows, split=onset, rng=rng)
    if span is None:
        empty = pd.DataFrame({c: [] for c in RANKING_COLUMNS})
        empty.attrs.update(explained=False, summary=f"no serving samples of {model_id!r} between "
                                                    f"{start} and {onset}")
        return empty
    before = np.asarray(span.stats.hours < onset)
    reference = ReferenceProfile(edges=edges, stats=span.stats.select(hours=before))
    isolation = isolate_features(span.stats, reference, TimeRange(onset, end),
                                 TimeRange(start, onset))
    contributions = importance = model = None
    reference_snapshot, notes = None, []
    window_rows = span.samples[span.samples["ts"] >= onset]
    baseline_rows = _same_hours_of_day(span.samples[span.samples["ts"] < onset], window_rows)
    sid = snapshot_id or (window_rows["snapshot_id"].mode().iloc[0] if len(window_rows) else None)
    if sid is not None:
        try:
            model = _load_module(reader, sid)
        except BadSnapshotError as exc:
            notes.append(f"Snapshot {sid} not ablated: {exc.one_line()}.")
    if model is not None and len(window_rows) and len(baseline_rows):
        means = reference.stats.select(columns=features).pooled().mean
        base_values = torch.as_tensor(np.nan_to_num(means), dtype=torch.float32)
        x_window = _inputs(window_rows, features)
        attr_window = ablation_attributions(model, x_window, base_values)
        attr_base = ablation_attributions(model, _inputs(baseline_rows, features), base_values)
        contributions = contribution_shift(attr_window, attr_base, features)
        # a snapshot already serving before the onset cannot explain it by how it weighs features
        replaced = baseline_rows["snapshot_id"].mode().iloc[0] != sid
        if replaced:
            reference_snapshot = _previous_stable(reader, model_id, sid, start, end)
        if reference_snapshot is not None:
            previous = _load_module(reader, reference_snapshot)
            importance = importance_change(
                attr_window, ablation_attributions(previous, x_window, base_values), features,
                alpha=settings.alpha, min_ratio=settings.min_ratio, seed=settings.seed)
    table = combine_evidence(isolation, contributions, importance,
                             reference_snapshot=reference_snapshot, settings=settings)
    table.attrs["summary"] = " ".join([table.attrs["summary"], *notes])
    table.attrs.update(snapshot_id=sid, reference_snapshot=reference_snapshot)
    return table


# -- reading the lake ----------------------------------------------------------------------------


def _same_hours_of_day(baseline: pd.DataFrame, window: pd.DataFrame) -> pd.DataFrame:
    """Baseline rows from the hours of day the window has, so daily cycles are no contribution."""
    return baseline[baseline["ts"].dt.hour.isin(window["ts"].dt.hour.unique())]


def _inputs(rows: pd.DataFrame, features: Sequence[str]) -> torch.Tensor:
    return torch.tensor(rows[list(features)].to_numpy(np.float32, na_value=np.nan))


def _load_module(reader: TelemetryReader, snapshot_id: str):
    from hawkeye_dagster.snapshot_io import load_artifact

    rows = reader.read("snapshots", equals={"snapshot_id": snapshot_id})
    if rows.empty:
        raise UnknownIdError(f"snapshot {snapshot_id!r} is not in the snapshots table")
    return load_artifact(reader, rows["artifact"].iloc[0], snapshot_id=snapshot_id).module()


def _previous_stable(reader: TelemetryReader, model_id: str, snapshot_id: str,
                     start: pd.Timestamp, end: pd.Timestamp) -> str | None:
    """The latest snapshot of the model that was operationally stable when ``snapshot_id`` came."""
    from hawkeye_dagster.analysis.stable_snapshots import latest_stable, stable_snapshots

    snapshots = reader.read("snapshots", equals={"model_id": model_id})
    published = snapshots.loc[snapshots["snapshot_id"] == snapshot_id, "published_at"]
    if published.empty:
        return None
    models = reader.read("models", columns=["model_id", "task"], equals={"model_id": model_id})
    samples = reader.serving_samples(model_id, TimeRange(start, end), columns=QUALITY_COLUMNS)
    history = stable_snapshots(snapshots, reader.read("experiments", equals={"model_id": model_id}),
                               samples.assign(model_id=model_id),
                               dict(zip(models["model_id"], models["task"])), as_of=end)
    stable = [s for s in latest_stable(history, model_id, published.iloc[0]) if s != snapshot_id]
    return stable[-1] if stable else None


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
