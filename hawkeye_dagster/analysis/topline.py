"""Top-line anomaly detection: when did a product metric degrade, and by how much.

Each series (product, segment, metric) is compared with itself on like hours
of earlier days: the expected value of a bucket is the median of the same
time-of-day over a reference period, and the residual is scaled by the
series' robust spread (MAD) there, so daily seasonality and a few outliers do
not raise alarms. Residuals are signed so that positive means *worse*
(``*_lower_is_better`` metrics are flipped), and a one-sided CUSUM over the
examined window gives the onset, the end of the excursion and its strength.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.robust import cusum_excursions, in_range, seasonal_robust_z
from hawkeye_dagster.contract import higher_is_better
from hawkeye_dagster.time_range import TimeRange

SERIES_KEYS = ["product", "segment", "metric"]


@dataclass(frozen=True)
class ToplineScores:
    """Seasonality-adjusted degradation scores on a regular time grid.

    Every frame is indexed by the bucket start ``ts`` (``[T]``) with one column
    per series, a ``MultiIndex`` of (product, segment, metric) (``[S]``).
    """

    observed: pd.DataFrame
    #: the like-hours median of the reference period
    expected: pd.DataFrame
    #: robust z-score of ``observed - expected``, positive = degradation
    z: pd.DataFrame
    #: the bucket width of the grid
    bucket: pd.Timedelta
    #: buckets before this time form the reference period
    reference_end: pd.Timestamp


def seasonal_scores(metrics: pd.DataFrame, reference_end: pd.Timestamp | None = None, *,
                    min_reference: pd.Timedelta = pd.Timedelta("2D")) -> ToplineScores:
    """Score every top-line series against its own like hours before ``reference_end``.

    ``metrics`` holds ``topline_metrics`` rows; the bucket width is the most
    common spacing of ``ts``. See
    :func:`~hawkeye_dagster.analysis.robust.seasonal_robust_z` for the reference.
    """
    wide = metrics.pivot_table(index="ts", columns=SERIES_KEYS, values="value", aggfunc="mean")
    if wide.empty:
        raise ValueError("no top-line metrics to score")
    bucket = _bucket(wide.index)
    wide = wide.reindex(pd.date_range(wide.index[0], wide.index[-1], freq=bucket))
    expected, z, reference_end = seasonal_robust_z(wide, reference_end, min_reference=min_reference)
    metrics_of = wide.columns.get_level_values("metric")
    sign = np.where([higher_is_better(m) for m in metrics_of], -1.0, 1.0)
    return ToplineScores(observed=wide, expected=expected, z=z * sign, bucket=bucket,
                         reference_end=reference_end)


def detect_topline_anomalies(metrics: pd.DataFrame, window: TimeRange | None = None, *,
                             allowance: float = 1.0, threshold: float = 12.0,
                             min_shift_z: float = 1.0, min_buckets: int = 3,
                             z_clip: float = 8.0) -> pd.DataFrame:
    """Degradations of top-line series inside ``window``, most severe first.

    A one-sided CUSUM ``C_t = max(0, C_{t-1} + z_t - allowance)`` runs over the
    window's buckets (``z`` clipped to ``±z_clip`` so one broken bucket cannot
    raise an alarm alone); a series is anomalous when ``C`` reaches
    ``threshold``, the excursion spans at least ``min_buckets`` buckets and its
    median z is at least ``min_shift_z``. The reference period is the data
    before ``window.start``.

    Returns one row per anomalous series with ``product, segment, metric``,
    ``onset`` (first degraded bucket), ``end`` (bucket where the excursion
    peaked), ``score`` (peak CUSUM, the severity), ``shift_z`` (median robust
    z over the excursion), ``relative_change`` (median ``(observed -
    expected) / |expected|``, negative for a drop), ``expected`` and
    ``observed`` (medians over the excursion) and ``higher_is_better``.
    """
    columns = [*SERIES_KEYS, "onset", "end", "score", "shift_z", "relative_change", "expected",
               "observed", "higher_is_better"]
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    window = window or TimeRange()
    scores = seasonal_scores(metrics, window.start)
    grid = scores.z.index
    inside = (grid >= scores.reference_end) & in_range(grid, window)
    if not inside.any():
        return pd.DataFrame(columns=columns)
    z = scores.z.loc[inside].to_numpy(float)
    times = grid[inside]
    onset, peak, strength = cusum_excursions(np.clip(np.nan_to_num(z), -z_clip, z_clip), allowance)

    rows = np.arange(len(times))[:, None]
    in_excursion = (rows >= onset) & (rows <= peak)
    expected = scores.expected.loc[inside].to_numpy(float)
    observed = scores.observed.loc[inside].to_numpy(float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns outside excursions
        shift_z = np.nanmedian(np.where(in_excursion, z, np.nan), axis=0)
        relative = np.nanmedian(np.where(in_excursion, (observed - expected) / np.abs(expected),
                                         np.nan), axis=0)
        med_expected = np.nanmedian(np.where(in_excursion, expected, np.nan), axis=0)
        med_observed = np.nanmedian(np.where(in_excursion, observed, np.nan), axis=0)
    found = (strength >= threshold) & (peak - onset + 1 >= min_buckets) & (shift_z >= min_shift_z)
    keys = scores.z.columns.to_frame(index=False)
    result = keys.assign(
        onset=times[onset], end=times[peak], score=strength, shift_z=shift_z,
        relative_change=relative, expected=med_expected, observed=med_observed,
        higher_is_better=[higher_is_better(m) for m in keys["metric"]],
    )[found]
    return result.sort_values("score", ascending=False, ignore_index=True)[columns]


def _bucket(index: pd.DatetimeIndex) -> pd.Timedelta:
    if len(index) < 2:
        return pd.Timedelta("1h")
    return index.to_series().diff().mode().iloc[0]
