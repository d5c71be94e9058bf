"""Real-time feature isolation: which features moved with the predictions in a degradation window.

From hourly statistics alone (no raw rows), each feature's time-aggregated
distribution is summarized by hourly series (its mean, std, null fraction and
PSI against the reference) and so is the prediction distribution (its mean,
median and PSI). Every hour gets a robust z-score against the baseline
period: centred on the baseline median for the same hour of day (when the
baseline covers each hour of day twice, so daily cycles are not mistaken for
shifts) and scaled by the baseline's median absolute deviation combined with
the hour's own sampling error (hours of few rows, or a series that was
constant in the baseline, do not give huge scores). Unlike the top-line
detector's :func:`~hawkeye_dagster.analysis.robust.seasonal_robust_z` there
is no day-of-week factor: a week of hourly feature statistics is too noisy for
one. The shift of a series is the median z over the window; its significance
the Mann-Whitney test of window hours against baseline hours; its onset the
start of its strongest CUSUM excursion in the window
(:func:`~hawkeye_dagster.analysis.robust.cusum_excursions`).

A feature is evidence for the prediction anomaly when its shift is
significant and its hourly z-scores are correlated with the prediction's.
Correlation cannot tell apart features that shifted at the same time; the
ablation evidence (:mod:`~hawkeye_dagster.analysis.ablation`) can.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from hawkeye_dagster.analysis.drift import drift_table
from hawkeye_dagster.analysis.feature_stats import PREDICTION, FeatureStats, ReferenceProfile
from hawkeye_dagster.analysis.robust import MAD_TO_SD, cusum_excursions, in_range
from hawkeye_dagster.time_range import TimeRange

FEATURE_VIEWS = ("mean", "std", "null_fraction", "psi")
PREDICTION_VIEWS = ("mean", "p50", "psi")
#: hourly z-scores are clipped to this before the onset search (one wild hour is no onset)
Z_CLIP = 8.0
#: CUSUM allowance of the onset search: hours below it pull an excursion back
ONSET_ALLOWANCE = 1.0


@dataclass(frozen=True)
class Isolation:
    """Evidence that features explain a shift of the predictions.

    Attributes
    ----------
    features : DataFrame
        One row per feature, most significant first: ``feature, view`` (its
        most significant series), ``z`` (median hourly z in the window),
        ``p_value`` (Mann-Whitney, two-sided, Bonferroni-adjusted over views),
        ``corr`` (Pearson correlation of that series' hourly z-scores with the
        prediction's, over baseline and window hours), ``onset`` (NaT when
        none), ``baseline_value``, ``window_value`` (medians of the series),
        ``score`` (``|z| * |corr|``).
    prediction : dict
        The prediction's strongest series: ``view, z, p_value, onset,
        baseline_value, window_value``.
    window, baseline : TimeRange
    """

    features: pd.DataFrame
    prediction: dict
    window: TimeRange
    baseline: TimeRange


def isolate_features(stats: FeatureStats, reference: ReferenceProfile, window: TimeRange,
                     baseline: TimeRange | None = None) -> Isolation:
    """Rank features by how significantly they shifted in ``window`` together with the predictions.

    Parameters
    ----------
    stats : FeatureStats
        Hourly statistics covering the baseline and the window, with the
        ``prediction`` column.
    reference : ReferenceProfile
        For the hourly PSI series.
    window : TimeRange
        The degradation window ``[start, end)``.
    baseline : TimeRange, optional
        Normal operation to compare with; default: every hour before the window.
    """
    if PREDICTION not in stats.columns:
        raise KeyError(f"the statistics hold no {PREDICTION!r} column")
    hours = stats.hours
    in_window = in_range(hours, window)
    baseline = baseline or TimeRange(None, window.start)
    in_baseline = in_range(hours, baseline) & ~in_window
    if not in_window.any() or in_baseline.sum() < 2:
        raise ValueError(f"need window hours and at least two baseline hours; statistics cover "
                         f"{hours.min()} to {hours.max()}")
    used = in_window | in_baseline
    stats = stats.select(hours=used)
    hours, in_window = stats.hours, in_window[used]
    features = [c for c in stats.columns if c != PREDICTION]

    series = view_series(stats, reference)                      # view -> (H, C)
    errors = _sampling_errors(stats, series)                 # view -> (H, C)
    col = {c: i for i, c in enumerate(stats.columns)}
    pred = {v: series[v][:, col[PREDICTION]] for v in PREDICTION_VIEWS}
    pred_err = {v: errors[v][:, col[PREDICTION]] for v in PREDICTION_VIEWS}
    feat_idx = np.array([col[c] for c in features], dtype=int)

    seasonal = _seasonal(hours, in_window)
    pred_z = np.stack([_robust_z(pred[v][:, None], pred_err[v][:, None], hours, in_window,
                                 seasonal) for v in PREDICTION_VIEWS])          # (V, H, 1)
    feat_z = np.stack([_robust_z(series[v][:, feat_idx], errors[v][:, feat_idx], hours,
                                 in_window, seasonal) for v in FEATURE_VIEWS])  # (V, H, F)
    pred_shift, pred_p, pred_best = _window_shift(pred_z, in_window)
    feat_shift, feat_p, best = _window_shift(feat_z, in_window)
    pred_view = PREDICTION_VIEWS[pred_best[0]]
    pred_hourly = pred_z[pred_best[0], :, 0]                                              # (H,)

    f_range = np.arange(len(features))
    best_series = np.stack([series[v][:, feat_idx] for v in FEATURE_VIEWS])[best, :, f_range]
    best_z = feat_z[best, :, f_range]                                                     # (F, H)
    frame = pd.DataFrame({
        "feature": features,
        "view": np.asarray(FEATURE_VIEWS)[best],
        "z": feat_shift,
        "p_value": feat_p,
        "corr": _pearson(best_z, pred_hourly),
        "onset": _onset(best_z, feat_shift, in_window, hours),
        "baseline_value": np.nanmedian(best_series[:, ~in_window], axis=1),
        "window_value": np.nanmedian(best_series[:, in_window], axis=1),
    })
    frame["score"] = frame["z"].abs() * frame["corr"].abs().fillna(0.0)
    frame = frame.sort_values(["p_value", "score"], ascending=[True, False], ignore_index=True)
    prediction = {
        "view": pred_view,
        "z": float(pred_shift[0]),
        "p_value": float(pred_p[0]),
        "onset": _onset(pred_hourly[None, :], pred_shift, in_window, hours)[0],
        "baseline_value": float(np.nanmedian(pred[pred_view][~in_window])),
        "window_value": float(np.nanmedian(pred[pred_view][in_window])),
    }
    return Isolation(features=frame, prediction=prediction, window=window, baseline=baseline)


def view_series(stats: FeatureStats, reference: ReferenceProfile) -> dict[str, np.ndarray]:
    """Hourly series per view, each (H, C); PSI is NaN for columns the reference lacks."""
    with np.errstate(invalid="ignore", divide="ignore"):
        null_fraction = stats.counts["n_null"] / stats.counts["count"]
    drift = drift_table(stats, reference, by_hour=True)
    psi = drift.pivot(index="hour", columns="column", values="psi").reindex(
        index=stats.hours, columns=list(stats.columns)).to_numpy()
    return {"mean": stats.values["mean"], "std": stats.values["std"], "p50": stats.values["p50"],
            "null_fraction": null_fraction, "psi": psi}


def _sampling_errors(stats: FeatureStats, series: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Standard error of each hourly value from its sample size alone, each (H, C)."""
    n = np.where(stats.n_finite > 0, stats.n_finite, np.nan)
    count = stats.counts["count"].astype(float)
    std = stats.values["std"]
    p = np.maximum(series["null_fraction"], 1 / count)
    bins = stats.hist_count.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "mean": std / np.sqrt(n),
            "p50": 1.2533 * std / np.sqrt(n),  # sqrt(pi / 2): the median's error for normal data
            "std": std / np.sqrt(2 * n),
            "null_fraction": np.sqrt(p * (1 - p) / count),
            # PSI of two samples of one distribution: about chi2(B - 1) / n
            "psi": np.sqrt(2 * (bins - 1)) / n,
        }


def _seasonal(hours: pd.DatetimeIndex, in_window: np.ndarray) -> bool:
    """Centre on hour-of-day medians when every hour of day appears twice in the baseline."""
    base_hod = np.asarray(hours.hour)[~in_window]
    return np.bincount(base_hod, minlength=24).min() >= 2


def _robust_z(values: np.ndarray, errors: np.ndarray, hours: pd.DatetimeIndex,
              in_window: np.ndarray, seasonal: bool) -> np.ndarray:
    """Hourly robust z-scores against the baseline hours, shape (H, C)."""
    base = values[~in_window]
    if seasonal:
        hod = np.asarray(hours.hour)
        centre = pd.DataFrame(base).groupby(hod[~in_window]).median().reindex(hod).to_numpy()
    else:
        centre = np.broadcast_to(np.nanmedian(base, axis=0), values.shape)
    resid = values - centre
    mad = np.nanmedian(np.abs(resid[~in_window]), axis=0)
    scale = np.sqrt((MAD_TO_SD * mad) ** 2 + np.nanmedian(errors[~in_window], axis=0) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return resid / scale


def _pearson(series: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Correlation of each row of ``series`` (F, H) with ``target`` (H,), over hours both have."""
    ok = np.isfinite(series) & np.isfinite(target)[None, :]
    n = ok.sum(axis=1)
    x = np.where(ok, series, 0.0)
    y = np.where(ok, target[None, :], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(ok, x - x.sum(axis=1, keepdims=True) / n[:, None], 0.0)
        y = np.where(ok, y - y.sum(axis=1, keepdims=True) / n[:, None], 0.0)
        return (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))


def _window_shift(z_hourly: np.ndarray,
                  in_window: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shift of the window vs the baseline for each column of (V, H, C) hourly z-scores.

    Returns, each of shape (C,): the median window z of the most significant
    view, the two-sided Mann-Whitney p-value of window vs baseline hours
    (Bonferroni-adjusted over the V views) and that view's index.
    """
    z = np.nan_to_num(z_hourly)  # an hour with no value counts as no change
    shift = np.median(z[:, in_window], axis=1)                                 # (V, C)
    p = sps.mannwhitneyu(z[:, in_window], z[:, ~in_window], axis=1, method="asymptotic").pvalue
    p = np.where(np.isnan(p), 1.0, p)
    # the most significant view; among equally significant ones the largest shift
    best = np.lexsort((-np.abs(shift), p), axis=0)[0]                          # (C,)
    cols = np.arange(z.shape[2])
    return shift[best, cols], np.minimum(p[best, cols] * len(z), 1.0), best


def _onset(z_hourly: np.ndarray, shift: np.ndarray, in_window: np.ndarray,
           hours: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Start of the strongest CUSUM excursion, in the shift's direction, within the window.

    ``z_hourly`` is (F, H) and ``shift`` (F,); NaT where the window does not move that way.
    """
    oriented = np.clip(np.nan_to_num(z_hourly[:, in_window]).T * np.sign(shift), -Z_CLIP, Z_CLIP)
    start, _, strength = cusum_excursions(oriented, ONSET_ALLOWANCE)
    onset = hours[in_window][np.minimum(start, in_window.sum() - 1)]
    return onset.where(strength > 0)
