"""Top-line degradation to models: whose prediction quality fell with the top line.

For every model serving the affected segment, the quality of its served
predictions is aggregated per time bucket (log-loss and calibration where
labels have arrived, squared error and bias for regression, the prediction
distribution where they have not; a NaN prediction counts as the worst
possible loss) and scored against like hours before the onset. A model is a
suspect when its quality degraded during the incident, the degradation moves
with the top line, and it carries traffic: the ranking weighs all three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.robust import seasonal_robust_z

#: the ``serving_samples`` columns quality needs (no feature columns)
QUALITY_COLUMNS = ["ts", "snapshot_id", "segment", "prediction", "label"]
#: probabilities are clipped to ``[EPS, 1 - EPS]``; a NaN prediction costs ``-log(EPS)``
EPS = 1e-4
#: fewer labelled rows than this in a bucket: judge it by its prediction distribution
MIN_LABELED = 10
#: robust z-scores are clipped here so one broken bucket cannot dominate a mean
_Z_CLIP = 8.0

RANKING_COLUMNS = ["model_id", "task", "traffic_share", "degradation_z", "correlation", "impact",
                   "score", "loss_before", "loss_after", "nan_fraction", "suspect"]


def row_loss(prediction: np.ndarray, label: np.ndarray, task: str,
             regression_cap: float = np.inf) -> np.ndarray:
    """Per-row loss ``[N]``: log-loss (``binary_classification``) or squared error (``regression``).

    A NaN (or infinite) prediction gets the worst loss: ``-log(EPS)`` for
    binary, ``regression_cap`` for regression. Rows without a label are NaN.
    """
    bad = ~np.isfinite(prediction)
    if task == "binary_classification":
        p = np.clip(np.where(bad, 0.5, prediction), EPS, 1 - EPS)
        loss = -(label * np.log(p) + (1 - label) * np.log1p(-p))
        worst = -np.log(EPS)
    else:
        loss = np.minimum((np.where(bad, 0.0, prediction) - label) ** 2, regression_cap)
        worst = regression_cap
    return np.where(np.isnan(label), np.nan, np.where(bad, worst, loss))


def regression_cap(labels: pd.Series) -> float:
    """The worst plausible squared error: the squared spread of labels (0.1%..99.9% quantiles)."""
    lo, hi = labels.quantile([0.001, 0.999])
    spread = hi - lo
    return float(spread**2) if np.isfinite(spread) and spread > 0 else 1.0


def bucket_quality(samples: pd.DataFrame, task: str, bucket: pd.Timedelta, *,
                   by: Sequence[str] = (), cap: float | None = None) -> pd.DataFrame:
    """Prediction quality per time bucket (and per ``by`` column, e.g. ``snapshot_id``).

    ``samples`` holds :data:`QUALITY_COLUMNS` of ``serving_samples``. Returns
    one row per (``ts`` bucket start, ``*by``) with ``n`` rows, ``n_labeled``,
    ``nan_count`` (non-finite predictions), ``loss`` and ``loss_var`` (mean and
    variance of :func:`row_loss` over labelled rows), ``bias`` (mean prediction minus label over
    labelled finite
    rows: calibration), ``prediction_mean`` and ``prediction_std`` (finite rows).
    """
    prediction = samples["prediction"].to_numpy(float)
    label = samples["label"].to_numpy(float, na_value=np.nan)
    if cap is None and task != "binary_classification":
        cap = regression_cap(samples["label"])
    finite = np.isfinite(prediction)
    labeled = ~np.isnan(label)
    scored = labeled & finite
    rows = pd.DataFrame({
        "ts": samples["ts"].dt.floor(bucket),
        **{c: samples[c] for c in by},
        "n": 1,
        "n_labeled": labeled.astype(int),
        "nan_count": (~finite).astype(int),
        "loss": row_loss(prediction, label, task, cap if cap is not None else np.inf),
        "error": np.where(scored, prediction - label, np.nan),
        "pred": np.where(finite, prediction, np.nan),
    })
    grouped = rows.groupby(["ts", *by], sort=True, observed=True)
    out = grouped.agg(n=("n", "sum"), n_labeled=("n_labeled", "sum"),
                      nan_count=("nan_count", "sum"),
                      loss=("loss", "mean"), loss_var=("loss", "var"), bias=("error", "mean"),
                      prediction_mean=("pred", "mean"), prediction_std=("pred", "std"))
    return out.reset_index()


def degradation_z(quality: pd.DataFrame, grid: pd.DatetimeIndex, reference_end: pd.Timestamp,
                  *, min_labeled: int = MIN_LABELED) -> pd.Series:
    """One model's degradation per bucket of ``grid`` (``[T]``, about N(0, 1) when nothing changed).

    Buckets with at least ``min_labeled`` labels are judged by their loss
    (log-loss or squared error, which includes miscalibration): its robust z
    against like hours before ``reference_end``. The others, whose labels
    have not arrived, by how far their prediction mean and spread moved:
    ``max(|z_mean|, |z_std|)``, standardized by its own mean and spread over
    the reference buckets so both kinds read on one scale. NaN predictions
    give a count z ``nan_count / sqrt(max(n * p_ref, 1))`` (``p_ref`` the
    reference NaN rate); where there are NaNs the larger of the two is the
    bucket's degradation.
    Buckets without samples are NaN.
    """
    q = quality.set_index("ts").reindex(grid)
    enough = q["n_labeled"].to_numpy(float) >= min_labeled
    signals = pd.DataFrame({"loss": q["loss"].where(enough),
                            "prediction_mean": q["prediction_mean"],
                            "prediction_std": q["prediction_std"]})
    _, z, reference_end = seasonal_robust_z(signals, reference_end)
    z = z.clip(-_Z_CLIP, _Z_CLIP)
    before = grid < reference_end
    shift = np.fmax(z["prediction_mean"].abs(), z["prediction_std"].abs())
    shift = (shift - shift[before].mean()) / max(shift[before].std(), 1e-9)
    quality_z = z["loss"].where(enough, shift)
    n = q["n"].fillna(0).to_numpy(float)
    nan_count = q["nan_count"].fillna(0).to_numpy(float)
    p_ref = nan_count[before].sum() / max(n[before].sum(), 1.0)
    nan_z = nan_count / np.sqrt(np.fmax(n * p_ref, 1.0))
    worst = np.where(nan_count > 0, np.fmax(quality_z.to_numpy(), nan_z), quality_z.to_numpy())
    return pd.Series(worst, index=grid).where(n > 0)


def rank_models(topline_z: pd.Series, onset: pd.Timestamp, end: pd.Timestamp,
                qualities: Mapping[str, pd.DataFrame], tasks: Mapping[str, str], *,
                min_degradation_z: float = 2.0, min_correlation: float = 0.1,
                smoothing: int | None = None) -> pd.DataFrame:
    """Rank the models serving a degraded segment by how well they explain the top-line drop.

    ``topline_z`` is the degraded series' robust z (``[T]`` on the top-line
    grid, positive = worse); ``[onset, end]`` is the excursion; ``qualities``
    maps each model to its :func:`bucket_quality` in the segment over the
    same period. Per model:

    - ``traffic_share``: its share of the segment's sampled requests during the excursion;
    - ``degradation_z``: ``mean(d) * sqrt(k)`` over the excursion's ``k``
      buckets of :func:`degradation_z` ``d`` (~N(0, 1) when nothing changed);
    - ``correlation``: Pearson correlation of ``d`` with the top-line z, both
      smoothed by a centred rolling mean of ``smoothing`` buckets (by default a
      day of the grid's buckets, the top line's seasonal period, so what is left
      is the trend, at any cadence), over the grid;
    - ``impact``: the mean of ``share * max(d, 0)`` over the excursion;
    - ``score``: ``impact * max(correlation, 0)``.

    A model is a ``suspect`` when ``degradation_z >= min_degradation_z`` and
    ``correlation >= min_correlation``; when none is, the best-scoring model
    with half that degradation (and the correlation) still is, since the top
    line did degrade. Sorted suspects first, then by score.
    """
    grid = topline_z.index
    incident = (grid >= onset) & (grid <= end)
    counts = pd.DataFrame({m: q.set_index("ts")["n"].reindex(grid) for m, q in qualities.items()},
                          index=grid).fillna(0.0)
    share = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0)
    d = pd.DataFrame({m: degradation_z(q, grid, onset) for m, q in qualities.items()}, index=grid)
    if smoothing is None:
        smoothing = max(1, int(pd.Timedelta("1D") // pd.Timedelta(grid.freq or "1h")))
    smooth = {"window": smoothing, "center": True, "min_periods": 1}
    correlation = d.rolling(**smooth).mean().corrwith(
        topline_z.clip(-_Z_CLIP, _Z_CLIP).rolling(**smooth).mean()).fillna(0.0)
    during = d.loc[incident]
    before, after = _losses(qualities, grid, onset, incident)
    incident_rows = {m: q[q["ts"].isin(grid[incident])] for m, q in qualities.items()}
    ranking = pd.DataFrame({
        "model_id": list(qualities),
        "task": [tasks[m] for m in qualities],
        "traffic_share": share.loc[incident].mean().fillna(0.0).to_numpy(),
        "degradation_z": (during.mean() * np.sqrt(during.count())).fillna(0.0).to_numpy(),
        "correlation": correlation.to_numpy(),
        "impact": (share * d.clip(lower=0)).loc[incident].mean().fillna(0.0).to_numpy(),
        "loss_before": before, "loss_after": after,
        "nan_fraction": [r["nan_count"].sum() / max(r["n"].sum(), 1)
                         for r in incident_rows.values()],
    })
    ranking["score"] = ranking["impact"] * ranking["correlation"].clip(lower=0)
    correlated = ranking["correlation"] >= min_correlation
    ranking["suspect"] = (ranking["degradation_z"] >= min_degradation_z) & correlated
    weak = correlated & (ranking["degradation_z"] >= min_degradation_z / 2)
    if not ranking["suspect"].any() and weak.any():
        # the top line did degrade: follow the model that best explains it, even weakly
        ranking.loc[ranking["score"].where(weak).idxmax(), "suspect"] = True
    ranking = ranking.sort_values(["suspect", "score"], ascending=False, ignore_index=True)
    return ranking[RANKING_COLUMNS]


def _losses(qualities: Mapping[str, pd.DataFrame], grid: pd.DatetimeIndex, onset: pd.Timestamp,
            incident: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-weighted mean loss of labelled rows before the onset and during the excursion."""
    def mean_loss(q: pd.DataFrame, mask: np.ndarray) -> float:
        part = q[q["ts"].isin(grid[mask]) & (q["n_labeled"] > 0)]
        weight = part["n_labeled"].sum()
        return float((part["loss"] * part["n_labeled"]).sum() / weight) if weight else np.nan

    before = np.array([mean_loss(q, grid < onset) for q in qualities.values()])
    after = np.array([mean_loss(q, incident) for q in qualities.values()])
    return before, after
