"""Robust statistics of time series that the detectors share.

The scale conversion of a median absolute deviation (:data:`MAD_TO_SD`), robust z-scores of
series against like hours of a reference period (:func:`seasonal_robust_z`), the strongest
one-sided CUSUM excursion (:func:`cusum_excursions`) and the mask of a time window on a grid
(:func:`in_range`). The top line (:mod:`~hawkeye_dagster.analysis.topline`), feature
isolation, model isolation, change points and training diagnosis all use them from here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from hawkeye_dagster.time_range import TimeRange

_DAY = pd.Timedelta("1D")
#: a MAD of 0 (a flat series) would make any change infinitely significant
_MIN_RELATIVE_SCALE = 1e-6
#: median absolute deviation to standard deviation, for normal data
MAD_TO_SD = 1.4826


def seasonal_robust_z(wide: pd.DataFrame, reference_end: pd.Timestamp | None, *,
                      min_reference: pd.Timedelta = pd.Timedelta("2D"),
                      ) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """Expected values and robust z-scores of series against like hours of a reference period.

    ``wide`` is ``[T, S]`` on a regular time grid (``index.freq`` set). With a
    bucket that divides a day the seasonal phase is the time of day (like
    hours across days), otherwise there is none. The expected value of a
    bucket is the median of its phase over the buckets before
    ``reference_end``, times (or, for series that are not positive, plus) a
    day-of-week factor: the median over the reference's same weekday of the
    ratio to (difference from) that profile, so a weekend is compared with
    weekends where the reference has them. The scale is the MAD (times
    1.4826) of the reference residuals, inflated by ``sqrt(n / (n - 1) *
    (1 + pi / 2n))`` for a profile taken from ``n`` days of data (in-sample residuals
    understate new days' errors), and floored so a flat series does not give
    infinite scores. A weekday the reference lacks (history shorter than a
    week) has an unknown factor: its buckets' scale also takes in how much
    the reference's weekdays differ (the root mean square of their factors),
    so a first weekend is not mistaken for a break. When less than ``min_reference`` precedes
    ``reference_end`` (or it is ``None``), the first ``min_reference`` of the
    grid is the reference.

    Returns ``(expected, z, reference_end)``: two frames shaped like ``wide``
    (``z`` positive above expectation) and the reference end used.
    """
    grid = wide.index
    bucket = pd.Timedelta(grid.freq)
    if reference_end is None or reference_end - grid[0] < min_reference:
        reference_end = grid[0] + min_reference
    period = int(_DAY / bucket) if _DAY % bucket == pd.Timedelta(0) else 1
    phase = np.asarray(((grid - grid[0].normalize()) // bucket) % period)
    in_reference = grid < reference_end

    reference = wide.loc[in_reference]
    profile = reference.groupby(phase[in_reference]).median().reindex(phase).set_axis(grid)
    unseen_weekday = 0.0
    if period > 1:
        profile, unseen_weekday = _weekday_adjusted(wide, profile, in_reference)
    residual = wide - profile
    ref_residual = residual.loc[in_reference].to_numpy(float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # series without reference data
        centre = np.nanmedian(ref_residual, axis=0)
        scale = MAD_TO_SD * np.nanmedian(np.abs(ref_residual - centre), axis=0)
        level = np.nanmedian(np.abs(reference.to_numpy(float)), axis=0)
    # in-sample residuals understate the error of a median of n values on new days; n counts
    # the days each series has data for, not the reference's length on the grid
    n = np.fmax(np.isfinite(reference.to_numpy(float)).sum(axis=0) / period, 2.0)
    scale = scale * np.sqrt(n / (n - 1) * (1 + np.pi / (2 * n)))
    scale = np.fmax(scale, _MIN_RELATIVE_SCALE * np.fmax(level, 1.0))
    return profile, residual / np.sqrt(scale**2 + unseen_weekday**2), reference_end

def _weekday_adjusted(wide: pd.DataFrame, profile: pd.DataFrame,
                      in_reference: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """``profile`` scaled (positive series) or shifted (others) by each weekday's median
    departure from it in the reference; weekdays the reference lacks are left as they are,
    and returned with the uncertainty of their unknown departure (``[T, S]``, in the series'
    units; 0 on weekdays the reference has): the root mean square of the known departures.

    Each departure is shrunk towards none by its own sampling error
    (``d * max(0, 1 - se^2 / d^2)``, ``se`` from the spread of the reference's
    departures), so a noisy series is not "corrected" by its noise.
    """
    weekday = wide.index.dayofweek.to_numpy()
    positive = (wide.loc[in_reference] > 0).all() & (profile.loc[in_reference] > 0).all()
    with np.errstate(all="ignore"):
        departure = (wide / profile - 1).where(positive, wide - profile, axis=1)
    reference = departure.loc[in_reference]
    grouped = reference.groupby(weekday[in_reference])
    by_day, count = grouped.median(), grouped.count()
    spread = MAD_TO_SD * (reference - reference.median()).abs().median()
    se2 = (np.pi / 2) * spread**2 / count.where(count > 0)
    shrunk = by_day * (1 - se2 / by_day**2).clip(lower=0.0)
    shift = shrunk.reindex(weekday).set_axis(wide.index).fillna(0.0)
    typical = np.sqrt((shrunk**2).mean())  # [S]; NaN for a series with no reference at all
    unseen = (count.reindex(weekday).fillna(0).to_numpy() == 0) * typical.fillna(0.0).to_numpy()
    unseen = np.where(positive.to_numpy(), np.abs(profile.to_numpy(float)) * unseen, unseen)
    adjusted = (profile * (1 + shift)).where(positive, profile + shift, axis=1)
    return adjusted, np.nan_to_num(unseen)

def cusum_excursions(z: np.ndarray, allowance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strongest upward excursion of each column of ``z`` (``[T, S]``) by one-sided CUSUM.

    Returns ``(onset, peak, strength)``, each ``[S]``: the row where the
    excursion starts, the row where the CUSUM statistic peaks, and that peak.
    Computed in closed form from cumulative sums (``C_t = S_t - min_{j<=t}
    S_j`` with ``S`` the cumulative sum of ``z - allowance`` from 0), so no loop.
    """
    steps = z.shape[0]
    cumulative = np.vstack([np.zeros((1, z.shape[1])), np.cumsum(z - allowance, axis=0)])
    statistic = cumulative - np.minimum.accumulate(cumulative, axis=0)
    peak_at = np.argmax(statistic, axis=0)  # index into cumulative, 1..T when positive
    strength = statistic[peak_at, np.arange(z.shape[1])]
    before_peak = np.arange(steps + 1)[:, None] <= peak_at
    onset = np.argmin(np.where(before_peak, cumulative, np.inf), axis=0)
    peak = np.maximum(peak_at - 1, onset)
    return onset, peak, strength

def in_range(grid: pd.DatetimeIndex, window: TimeRange) -> np.ndarray:
    """Boolean mask of the times of ``grid`` inside ``[window.start, window.end)``."""
    keep = np.ones(len(grid), dtype=bool)
    if window.start is not None:
        keep &= grid >= window.start
    if window.end is not None:
        keep &= grid < window.end
    return keep
