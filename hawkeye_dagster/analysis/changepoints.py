"""When did a lineage node's statistics move, and by how much, against their own seasonality.

The contract's long ``lineage_node_stats`` table is pivoted once into a wide
frame ``[time x (node_id, stat)]`` on a regular grid; the detector then scores
all columns at once with the same robust, seasonality-aware residuals as the
top-line detector (:func:`~hawkeye_dagster.analysis.robust.seasonal_robust_z`:
like hours across days, median/MAD) and a two-sided CUSUM
(:func:`~hawkeye_dagster.analysis.robust.cusum_excursions`), so one outlier
neither moves the baseline nor raises an alarm, and a gradual drift gets the
onset where it began rather than where it crossed a line.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.robust import cusum_excursions, seasonal_robust_z
from hawkeye_dagster.errors import ContractError

_STATS_COLUMNS = ("ts", "node_id", "stat", "value")
CHANGEPOINT_COLUMNS = ("node_id", "stat", "moved", "onset", "end", "strength", "z", "before",
                       "after")


def pivot_node_stats(stats: pd.DataFrame, freq: str | pd.Timedelta | None = None) -> pd.DataFrame:
    """Pivot the contract's ``lineage_node_stats`` to ``[time x (node_id, stat)]``.

    ``freq`` is the bucket width; by default the most common gap between
    distinct timestamps. Timestamps are floored onto the grid (``index.freq``
    is set; missing buckets are NaN rows); a repeated ``(ts, node_id, stat)``
    keeps its last value. Linear in rows (no ``pivot_table`` sort/groupby).
    """
    missing = [c for c in _STATS_COLUMNS if c not in stats.columns]
    if missing:
        raise ContractError("column missing", table="lineage_node_stats", column=missing[0])
    empty_columns = pd.MultiIndex.from_arrays([[], []], names=["node_id", "stat"])
    if not len(stats):
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="ts"), columns=empty_columns)
    ts = pd.DatetimeIndex(stats["ts"])
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    if freq is None:
        distinct = ts.unique().sort_values()
        freq = pd.Series(distinct[1:] - distinct[:-1]).mode().iloc[0] if len(distinct) > 1 \
            else pd.Timedelta(days=1)
    freq = pd.Timedelta(freq)
    times = pd.date_range(ts.min().floor(freq), ts.max().floor(freq), freq=freq, name="ts")
    row = np.asarray((ts.floor(freq) - times[0]) // freq)
    col, columns = pd.MultiIndex.from_arrays(
        [stats["node_id"].to_numpy(), stats["stat"].to_numpy()], names=["node_id", "stat"]
    ).factorize()
    values = np.full((len(times), len(columns)), np.nan)
    values[row, col] = pd.to_numeric(stats["value"]).to_numpy(dtype=float, na_value=np.nan)
    return pd.DataFrame(values, index=times, columns=pd.MultiIndex.from_tuples(
        columns, names=["node_id", "stat"]))


def series_cadence(stats: pd.DataFrame) -> pd.Series:
    """Each ``(node_id, stat)`` series' bucket width: the median gap between its distinct
    timestamps, in whole minutes (a few missing buckets do not change it; a series with one
    timestamp gets a day). Independent of row order. Returns a Series of Timedeltas indexed by the pair."""
    ts = pd.DatetimeIndex(stats["ts"])
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    rows = pd.DataFrame({"node_id": stats["node_id"].to_numpy(), "stat": stats["stat"].to_numpy(),
                         "ts": ts}).drop_duplicates().sort_values(["node_id", "stat", "ts"],
                                                                   kind="stable")
    gap = rows.groupby(["node_id", "stat"], sort=True)["ts"].diff()
    cadence = gap.groupby([rows["node_id"], rows["stat"]], sort=True).median()
    # whole minutes, so timestamps written with jitter still share their series' grid
    return cadence.fillna(pd.Timedelta(days=1)).dt.round("min").clip(
        lower=pd.Timedelta(minutes=1)).rename("cadence")


def pivot_by_cadence(stats: pd.DataFrame) -> list[pd.DataFrame]:
    """:func:`pivot_node_stats` once per cadence (:func:`series_cadence`), finest first, so an
    hourly and a daily series each get their own grid (a daily series on an hourly grid would
    be 23 missing buckets in 24)."""
    if not len(stats):
        return [pivot_node_stats(stats)]
    cadence = series_cadence(stats)
    key = pd.MultiIndex.from_arrays([stats["node_id"].to_numpy(), stats["stat"].to_numpy()])
    of_row = cadence.reindex(key).to_numpy()
    return [pivot_node_stats(stats[of_row == freq], freq) for freq in np.sort(cadence.unique())]


def select_nodes(wide: pd.DataFrame, node_ids: Iterable[str]) -> pd.DataFrame:
    """The columns of these nodes (nodes without statistics are skipped); O(columns) integer work."""
    columns = wide.columns
    wanted = columns.levels[0].get_indexer(pd.Index(list(node_ids)))
    return wide.iloc[:, np.isin(columns.codes[0], wanted[wanted >= 0])]


def detect_changepoints(
    wide: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    baseline: pd.Timedelta = pd.Timedelta(days=7),
    allowance: float = 1.0,
    threshold: float = 15.0,
    min_shift_z: float = 5.0,
    min_buckets: int = 3,
    z_clip: float = 8.0,
) -> pd.DataFrame:
    """Whether, when and how much each ``(node, stat)`` column moved in ``[start, end)``.

    Parameters
    ----------
    wide:
        Statistics as :func:`pivot_node_stats` returns them (``[T, C]``).
    start, end:
        The scanned window; the ``baseline`` just before ``start`` is the
        reference of like hours (its median is the expected value, its MAD the
        scale).
    allowance, threshold, z_clip:
        One-sided CUSUMs ``C_t = max(0, C_{t-1} + z_t - allowance)`` upward and
        downward over robust z clipped to ``±z_clip``; the stronger excursion
        counts. A move needs ``C`` to reach ``threshold`` (so at least
        ``threshold / (z_clip - allowance)`` buckets even for a huge jump; one
        broken bucket is not a move).
    min_shift_z, min_buckets:
        The excursion must also last ``min_buckets`` buckets from its onset
        with a median ``|z|`` of at least ``min_shift_z``; the onset is where
        ``|z|`` last rose clearly beyond ``min_shift_z`` (see :func:`_clear_onset`).

    Returns
    -------
    One row per column (:data:`CHANGEPOINT_COLUMNS`): ``moved``; ``onset``
    and ``end`` of the strongest excursion (first bucket and the bucket
    where it peaked; NaT when not moved); ``strength`` (its CUSUM peak, the
    evidence even below threshold); ``z`` (signed median robust z over the
    excursion); ``before`` (baseline median) and ``after`` (median over the
    excursion), in the statistic's own units.
    """
    freq = pd.Timedelta(wide.index.freq) if wide.index.freq is not None else pd.Timedelta(days=1)
    start, end = pd.Timestamp(start).floor(freq), pd.Timestamp(end).ceil(freq)
    grid = pd.date_range(start - baseline, end - freq, freq=freq)
    frame = wide.reindex(grid)
    _, z_frame, _ = seasonal_robust_z(frame, start, min_reference=baseline)
    scanned = grid >= start
    z = z_frame.to_numpy(float)[scanned]
    observed = frame.to_numpy(float)
    window = observed[scanned]
    if not len(z):
        return _empty_changepoints(wide.columns)

    clipped = np.clip(np.nan_to_num(z), -z_clip, z_clip)
    up, down = cusum_excursions(clipped, allowance), cusum_excursions(-clipped, allowance)
    rising = up[2] >= down[2]
    start_row, peak, strength = (np.where(rising, u, d) for u, d in zip(up, down))
    onset = _clear_onset(np.where(rising, clipped, -clipped), start_row, peak, min_shift_z)
    rows = np.arange(len(z))[:, None]
    in_excursion = (rows >= onset) & (rows <= peak)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns with no data at all
        shift_z = np.nanmedian(np.where(in_excursion, z, np.nan), axis=0)
        after = np.nanmedian(np.where(in_excursion, window, np.nan), axis=0)
        before = np.nanmedian(observed[~scanned], axis=0)
    moved = ((strength >= threshold) & (peak - onset + 1 >= min_buckets)
             & (np.abs(np.nan_to_num(shift_z)) >= min_shift_z))
    times = grid[scanned]
    return pd.DataFrame({
        "node_id": wide.columns.get_level_values(0),
        "stat": wide.columns.get_level_values(1),
        "moved": moved,
        "onset": times[onset].where(moved),
        "end": times[peak].where(moved),
        "strength": strength,
        "z": np.where(moved, shift_z, 0.0),
        "before": before,
        "after": np.where(moved, after, before),
    })


def _clear_onset(signed: np.ndarray, start: np.ndarray, peak: np.ndarray,
                 level: float) -> np.ndarray:
    """Where the excursion clearly began: the start of the last run, up to its peak, of
    buckets beyond ``level`` (3-bucket median, so one noisy bucket neither starts nor breaks
    a run). The CUSUM start alone may take in noise just before a jump. ``signed``:
    ``[T, C]`` z oriented so the excursion is positive; ``start``/``peak``: ``[C]`` rows."""
    padded = np.pad(signed, ((1, 1), (0, 0)), mode="edge")
    smooth = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    rows = np.arange(len(signed))[:, None]
    cols = np.arange(signed.shape[1])
    strong = smooth >= level
    run_end = np.maximum.accumulate(np.where(strong, rows, -1), axis=0)[peak, cols]
    run_start = np.maximum.accumulate(np.where(strong, -1, rows), axis=0)[
        np.maximum(run_end, 0), cols] + 1
    return np.where(run_end >= start, np.maximum(run_start, start), start)


def _empty_changepoints(columns: pd.MultiIndex) -> pd.DataFrame:
    n = len(columns)
    nat = pd.DatetimeIndex([pd.NaT] * n, tz="UTC")
    return pd.DataFrame({"node_id": columns.get_level_values(0), "stat": columns.get_level_values(1),
                         "moved": np.zeros(n, bool), "onset": nat, "end": nat,
                         "strength": np.zeros(n), "z": np.zeros(n), "before": np.full(n, np.nan),
                         "after": np.full(n, np.nan)})
