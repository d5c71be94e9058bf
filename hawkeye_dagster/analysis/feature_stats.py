"""Hourly statistics of serving features and predictions, in one vectorized pass per block.

Drift scores, health checks and feature isolation all work from these per-hour
summaries, so raw serving samples are read once per day and never again:
counts of missing and infinite values, mean, std, min/max, exact quantiles and
a histogram on fixed bins learned from a reference window (with the sum of the
values in each bin, which makes Wasserstein and Kolmogorov-Smirnov distances
computable from the stored summary, see :mod:`hawkeye_dagster.analysis.drift`).

How: a block of columns is laid out as ``[columns, hours, slots]`` (each hour
padded with NaN to the busiest hour's row count) and sorted along the slots
in one call: every (column, hour) is then ``-inf``, finite values ascending,
``+inf``, NaN. Mapped to 64-bit keys ``segment | value`` (the value's float32
bits turned so that integer order is numeric order), the whole block is one
sorted array, so one ``searchsorted`` finds, for every (column, hour), where
its infinite and missing values start and where each histogram edge falls;
prefix sums give bin sums; quantiles are gathered at their ranks. No loop over
rows, hours or features: only over column blocks, sized to bound memory.

Values are summarized as float32 (the contract's feature type; predictions are
rounded to float32, a relative error below 6e-8). ``std`` is the population
standard deviation (``ddof=0``, as numpy and Evidently use it). Missing values
(null or NaN: pandas does not tell them apart) and infinities are counted and
excluded from every other statistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.summary_shape import QUANTILE_NAMES, QUANTILES, check_edges

PREDICTION = "prediction"
COUNT_STATS = ("count", "n_null", "n_inf")
VALUE_STATS = ("mean", "std", "min", "max", *QUANTILE_NAMES)
#: default number of reference bins (Evidently's default for PSI and Jensen-Shannon)
N_BINS = 30
#: elements of one column block (columns x hours x slots); about 24 bytes of scratch each
BLOCK_ELEMENTS = 1 << 21

_KEY_NEG_INF = np.uint32(0x007FFFFF)  # key of -inf; smaller keys are negative NaNs
_KEY_POS_INF = np.uint32(0xFF800000)  # key of +inf; larger keys are NaNs
_KEY_NAN = np.uint32(0xFFFFFFFF)
_VALUE_BITS = 32


@dataclass(frozen=True)
class FeatureStats:
    """Per-hour statistics of the columns (features and ``prediction``) of serving samples.

    Attributes
    ----------
    hours : DatetimeIndex, shape (H,)
        UTC start of each hour bucket, ascending.
    columns : tuple of str, length C
        Summarized columns.
    counts : dict of str to int64 array, shape (H, C)
        ``count`` (rows), ``n_null`` (null or NaN), ``n_inf`` (+-inf).
    values : dict of str to float64 array, shape (H, C)
        ``mean``, ``std``, ``min``, ``max`` and ``p1`` .. ``p99`` over the
        finite values (NaN where an hour has none).
    hist_count : int64 array, shape (H, C, B)
        Finite values in each reference bin (bins of :class:`ReferenceProfile`).
    hist_sum : float64 array, shape (H, C, B)
        Sum of the finite values in each bin.
    """

    hours: pd.DatetimeIndex
    columns: tuple[str, ...]
    counts: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    hist_count: np.ndarray
    hist_sum: np.ndarray

    @property
    def n_finite(self) -> np.ndarray:
        """Finite values per (hour, column), shape (H, C)."""
        return self.counts["count"] - self.counts["n_null"] - self.counts["n_inf"]

    def select(self, hours: np.ndarray | slice | None = None,
               columns: Sequence[str] | None = None) -> "FeatureStats":
        """A subset of hours (boolean mask, indices or slice) and/or columns."""
        h = slice(None) if hours is None else hours
        c = slice(None) if columns is None else _column_index(self.columns, columns)
        return FeatureStats(
            hours=self.hours[h],
            columns=tuple(np.asarray(self.columns, dtype=object)[c]),
            counts={k: v[h][:, c] for k, v in self.counts.items()},
            values={k: v[h][:, c] for k, v in self.values.items()},
            hist_count=self.hist_count[h][:, c],
            hist_sum=self.hist_sum[h][:, c],
        )

    @classmethod
    def concat(cls, parts: Sequence["FeatureStats"]) -> "FeatureStats":
        """Statistics of consecutive periods (same columns, disjoint hours) as one, by hour."""
        if not parts:
            raise ValueError("nothing to concatenate")
        columns = parts[0].columns
        if any(p.columns != columns for p in parts):
            raise ValueError("statistics to concatenate must cover the same columns")
        hours = parts[0].hours.append([p.hours for p in parts[1:]])
        if hours.has_duplicates:
            raise ValueError("statistics to concatenate overlap in time")
        order = np.argsort(hours, kind="stable")

        def stack(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(arrays)[order]

        return cls(
            hours=hours[order],
            columns=columns,
            counts={k: stack([p.counts[k] for p in parts]) for k in parts[0].counts},
            values={k: stack([p.values[k] for p in parts]) for k in parts[0].values},
            hist_count=stack([p.hist_count for p in parts]),
            hist_sum=stack([p.hist_sum for p in parts]),
        )

    def pooled(self) -> "PooledStats":
        """All hours pooled into one summary per column (exact, from the per-hour parts)."""
        n = self.n_finite
        total = n.sum(axis=0)
        mean_h = np.nan_to_num(self.values["mean"])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (n * mean_h).sum(axis=0) / total
            m2 = (n * np.nan_to_num(self.values["std"]) ** 2).sum(axis=0) + (
                n * (mean_h - mean) ** 2).sum(axis=0)
            std = np.sqrt(m2 / total)
        return PooledStats(
            columns=self.columns,
            count=self.counts["count"].sum(axis=0),
            n_null=self.counts["n_null"].sum(axis=0),
            n_inf=self.counts["n_inf"].sum(axis=0),
            mean=mean,
            std=std,
            min=np.where(total > 0, np.nanmin(self.values["min"], axis=0, initial=np.inf), np.nan),
            max=np.where(total > 0, np.nanmax(self.values["max"], axis=0, initial=-np.inf), np.nan),
            hist_count=self.hist_count.sum(axis=0),
            hist_sum=self.hist_sum.sum(axis=0),
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per (hour, column): counts, fractions, value statistics and the histogram.

        The histogram is stored as list columns ``hist_count`` and ``hist_sum``;
        ``null_fraction`` and ``inf_fraction`` are derived for readers and checks.
        """
        h, c = len(self.hours), len(self.columns)
        frame = pd.DataFrame({
            "hour": np.repeat(self.hours, c),
            "column": np.tile(np.asarray(self.columns, dtype=object), h),
            **{k: v.ravel() for k, v in self.counts.items()},
        })
        with np.errstate(invalid="ignore", divide="ignore"):
            frame["null_fraction"] = frame["n_null"] / frame["count"]
            frame["inf_fraction"] = frame["n_inf"] / frame["count"]
        for k, v in self.values.items():
            frame[k] = v.ravel()
        bins = self.hist_count.shape[-1]
        frame["hist_count"] = list(self.hist_count.reshape(h * c, bins))
        frame["hist_sum"] = list(self.hist_sum.reshape(h * c, bins))
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "FeatureStats":
        """The inverse of :meth:`to_frame`; several frames may be concatenated first.

        Columns missing in some hours (a schema change) get zero counts and NaN values.
        """
        missing = {"hour", "column", *COUNT_STATS, *VALUE_STATS, "hist_count", "hist_sum"} - set(
            frame.columns)
        if missing:
            raise ContractError(f"feature statistics lack {sorted(missing)}", table="feature_stats",
                                column=sorted(missing)[0])
        hour_codes, hours = pd.factorize(frame["hour"], sort=True)
        col_codes, columns = pd.factorize(frame["column"], sort=False)
        if pd.MultiIndex.from_arrays([hour_codes, col_codes]).has_duplicates:
            raise ContractError("duplicate (hour, column) rows", table="feature_stats",
                                column="hour")
        shape = (len(hours), len(columns))
        counts = {k: _scatter(shape, hour_codes, col_codes, frame[k].to_numpy(np.int64), 0)
                  for k in COUNT_STATS}
        values = {k: _scatter(shape, hour_codes, col_codes, frame[k].to_numpy(np.float64), np.nan)
                  for k in VALUE_STATS}
        hist_count = np.stack(frame["hist_count"].to_numpy()).astype(np.int64)
        hist_sum = np.stack(frame["hist_sum"].to_numpy()).astype(np.float64)
        bins = hist_count.shape[-1]
        return cls(
            hours=pd.DatetimeIndex(hours),
            columns=tuple(columns),
            counts=counts,
            values=values,
            hist_count=_scatter((*shape, bins), hour_codes, col_codes, hist_count, 0),
            hist_sum=_scatter((*shape, bins), hour_codes, col_codes, hist_sum, 0.0),
        )


@dataclass(frozen=True)
class PooledStats:
    """Statistics of each column pooled over a window of hours; arrays of shape (C,) or (C, B)."""

    columns: tuple[str, ...]
    count: np.ndarray
    n_null: np.ndarray
    n_inf: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    hist_count: np.ndarray
    hist_sum: np.ndarray


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference window, summarized once so that drift never re-reads it.

    Attributes
    ----------
    edges : float32 array, shape (C, B - 1)
        Bin edges per column: the reference quantiles at ``k / B``, so that each
        of the B bins ``[e[k-1], e[k])`` (open-ended at both ends) holds about
        1/B of the reference values.
    stats : FeatureStats
        Hourly statistics of the reference window on these bins.
    """

    edges: np.ndarray
    stats: FeatureStats

    @property
    def columns(self) -> tuple[str, ...]:
        return self.stats.columns

    def edges_for(self, columns: Sequence[str]) -> np.ndarray:
        """Edges of the given columns, shape (len(columns), B - 1)."""
        return self.edges[_column_index(self.columns, columns)]

    def to_frame(self) -> pd.DataFrame:
        """The hourly statistics frame with each column's ``edges`` as a list column."""
        frame = self.stats.to_frame()
        edges = dict(zip(self.columns, self.edges))
        frame["edges"] = frame["column"].map(edges)
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "ReferenceProfile":
        stats = FeatureStats.from_frame(frame)
        first = frame.drop_duplicates("column").set_index("column")["edges"]
        edges = np.stack(first.loc[list(stats.columns)].to_numpy()).astype(np.float32)
        return cls(edges=edges.reshape(len(stats.columns), -1), stats=stats)


def hourly_stats(frame: pd.DataFrame, columns: Sequence[str], edges: np.ndarray, *,
                 time_column: str = "ts", table: str = "serving_samples",
                 block_elements: int = BLOCK_ELEMENTS) -> FeatureStats:
    """Statistics of ``columns`` per UTC hour of ``frame[time_column]``.

    Parameters
    ----------
    frame : DataFrame, shape (N, ...)
        Serving samples (or any frame with a tz-aware or UTC time column).
    columns : sequence of str, length C
        Numeric columns to summarize (features and usually ``prediction``).
    edges : array, shape (C, B - 1)
        Histogram bin edges per column, ascending (see :func:`reference_edges`).
    block_elements : int
        Columns are processed in blocks of about this many (padded) values,
        bounding scratch memory to about 24 bytes per value of a block.
    """
    edges = check_edges(edges, len(columns))
    buckets, hours = _hour_buckets(frame, time_column, table)
    parts = _blockwise(frame, columns, buckets, len(hours), edges, QUANTILES, table, block_elements)
    return FeatureStats(
        hours=hours,
        columns=tuple(columns),
        counts={k: parts[k] for k in COUNT_STATS},
        values={k: parts[k] for k in ("mean", "std", "min", "max")}
        | {name: parts["quantiles"][..., i] for i, name in enumerate(QUANTILE_NAMES)},
        hist_count=parts["hist_count"],
        hist_sum=parts["hist_sum"],
    )


def reference_edges(frame: pd.DataFrame, columns: Sequence[str], n_bins: int = N_BINS, *,
                    table: str = "serving_samples",
                    block_elements: int = BLOCK_ELEMENTS) -> np.ndarray:
    """Equal-frequency bin edges: the quantiles at ``k / n_bins`` of each column's finite values.

    Returns a float32 array of shape (C, n_bins - 1); a column with no finite
    value gets zeros (every finite value later lands in one side bin).
    Repeated edges (discrete values) leave empty bins, which all scores handle.
    """
    if n_bins < 2:
        raise ValueError("n_bins must be at least 2")
    levels = np.arange(1, n_bins) / n_bins
    buckets = np.zeros(len(frame), dtype=np.int64)
    parts = _blockwise(frame, columns, buckets, 1, np.zeros((len(columns), 0), np.float32), levels,
                       table, block_elements)
    return np.nan_to_num(parts["quantiles"][0]).astype(np.float32)


def reference_profile(frame: pd.DataFrame, columns: Sequence[str], n_bins: int = N_BINS, *,
                      time_column: str = "ts", table: str = "serving_samples",
                      block_elements: int = BLOCK_ELEMENTS) -> ReferenceProfile:
    """Edges from the reference window's quantiles and its hourly statistics on them."""
    edges = reference_edges(frame, columns, n_bins, table=table, block_elements=block_elements)
    stats = hourly_stats(frame, columns, edges, time_column=time_column, table=table,
                         block_elements=block_elements)
    return ReferenceProfile(edges=edges, stats=stats)


# -- the vectorized core -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where each row goes in the padded ``[hours, slots]`` layout of a column.

    Every hour gets ``slots`` places (its largest row count); unused places hold
    NaN, which sorts last and is told apart from missing values by the counts.
    """

    slot: np.ndarray       # (N,) flat index ``hour * slots + rank within the hour``
    length: np.ndarray     # (H,) rows per hour
    slots: int

    @classmethod
    def of(cls, buckets: np.ndarray, n_buckets: int) -> "_Layout":
        length = np.bincount(buckets, minlength=n_buckets)
        order = np.argsort(buckets, kind="stable")
        start = np.concatenate([[0], np.cumsum(length)[:-1]])
        rank = np.empty(len(buckets), dtype=np.int64)
        rank[order] = np.arange(len(buckets)) - start[buckets[order]]
        slots = max(int(length.max(initial=0)), 1)
        return cls(slot=buckets * slots + rank, length=length, slots=slots)


def _blockwise(frame: pd.DataFrame, columns: Sequence[str], buckets: np.ndarray, n_buckets: int,
               edges: np.ndarray, levels: Sequence[float], table: str,
               block_elements: int) -> dict[str, np.ndarray]:
    """Run :func:`_block_stats` over column blocks and join the results along the column axis."""
    _check_columns(frame, columns, table)
    layout = _Layout.of(buckets, n_buckets)
    width = max(1, block_elements // (n_buckets * layout.slots))
    levels = np.asarray(levels, np.float64)
    parts = [
        _block_stats(_block_matrix(frame, columns[i:i + width], table), layout,
                     edges[i:i + width], levels)
        for i in range(0, len(columns), width)
    ] or [_block_stats(np.zeros((0, len(frame)), np.float32), layout, edges, levels)]
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}


def _block_stats(block: np.ndarray, layout: _Layout, edges: np.ndarray,
                 levels: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of a float32 block of shape (Cb, N) per hour; arrays shaped (H, Cb, ...)."""
    n_cols = block.shape[0]
    n_hours, slots = len(layout.length), layout.slots
    block += np.float32(0)  # -0.0 becomes +0.0, so that keys order equal values together
    values = np.full((n_cols, n_hours * slots), np.nan, dtype=np.float32)
    values[:, layout.slot] = block
    del block
    values = values.reshape(n_cols, n_hours, slots)
    values.sort(axis=-1)  # every (column, hour): -inf, finite ascending, +inf, NaN (and padding)

    # where the regions and the histogram edges fall in each (column, hour), by one search
    segment = np.arange(n_cols * n_hours, dtype=np.int64).reshape(n_cols, n_hours, 1)
    keys = _float32_keys(values).astype(np.int64)
    keys |= segment << _VALUE_BITS
    probe = np.concatenate([
        np.full((n_cols, 1), _KEY_NEG_INF + 1, dtype=np.int64),
        _float32_keys(edges.astype(np.float32) + np.float32(0)).astype(np.int64),
        np.full((n_cols, 1), _KEY_POS_INF, dtype=np.int64),
        np.full((n_cols, 1), _KEY_POS_INF + 1, dtype=np.int64),
    ], axis=1)[:, None, :]                                                     # (Cb, 1, E+3)
    pos = np.searchsorted(keys.reshape(-1), (segment << _VALUE_BITS) | probe)  # (Cb, H, E+3)
    del keys
    pos -= segment * slots
    fin_lo, bounds, fin_hi, nan_lo = pos[..., 0], pos[..., :-1], pos[..., -2], pos[..., -1]
    n_fin = fin_hi - fin_lo
    has = n_fin > 0
    quantiles = _gather_quantiles(values, fin_lo, n_fin, levels)               # (Cb, H, Q)
    low = np.take_along_axis(values, np.minimum(fin_lo, slots - 1)[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(values, np.maximum(fin_hi - 1, 0)[..., None], axis=-1)[..., 0]

    # prefix sums over the finite values (others zeroed) give every bin's sum
    finite = np.isfinite(values)
    np.putmask(values, ~finite, 0)
    prefix = np.empty((n_cols, n_hours, slots + 1))
    prefix[..., 0] = 0
    prefix[..., 1:] = values  # casting first makes the cumulative sum several times faster
    np.cumsum(prefix[..., 1:], axis=-1, out=prefix[..., 1:])
    hist_sum = np.diff(np.take_along_axis(prefix, bounds, axis=-1), axis=-1)    # (Cb, H, B)
    del prefix
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = hist_sum.sum(axis=-1) / n_fin
        # a second pass about the mean: no cancellation, whatever the values' magnitude
        deviation = values - np.nan_to_num(mean)[..., None]
        deviation *= deviation
        np.putmask(deviation, ~finite, 0)
        std = np.sqrt(deviation.sum(axis=-1) / n_fin)
    length = np.broadcast_to(layout.length, (n_cols, n_hours))
    out = {
        "count": length,
        "n_null": length - nan_lo,
        "n_inf": fin_lo + (nan_lo - fin_hi),
        "mean": mean,
        "std": std,
        "min": np.where(has, low, np.nan),
        "max": np.where(has, high, np.nan),
        "quantiles": quantiles,
        "hist_count": np.diff(bounds, axis=-1),
        "hist_sum": hist_sum,
    }
    # (Cb, H, ...) -> (H, Cb, ...)
    return {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) for k, v in out.items()}


def _float32_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the numeric order of float32 ``values``; all NaNs last."""
    bits = values.view(np.uint32)
    keys = bits >> 31                    # 1 for negative numbers
    keys *= np.uint32(0x7FFFFFFF)
    keys |= np.uint32(0x80000000)        # negative: flip all bits; positive: flip the sign bit
    keys ^= bits
    np.putmask(keys, keys < _KEY_NEG_INF, _KEY_NAN)  # NaNs with the sign bit set
    return keys


def _gather_quantiles(values: np.ndarray, fin_lo: np.ndarray, n_fin: np.ndarray,
                      levels: np.ndarray) -> np.ndarray:
    """Linear-interpolation quantiles (numpy's default) of sorted finite segments: (Cb, H, Q)."""
    last = values.shape[-1] - 1
    rank = levels * np.maximum(n_fin - 1, 0)[..., None]
    below = np.floor(rank).astype(np.int64)
    frac = rank - below
    lo = np.minimum(fin_lo[..., None] + below, last)
    hi = np.minimum(lo + (frac > 0), last)
    v_lo = np.take_along_axis(values, lo, axis=-1).astype(np.float64)
    v_hi = np.take_along_axis(values, hi, axis=-1).astype(np.float64)
    with np.errstate(invalid="ignore"):  # empty segments gather NaN padding; masked below
        q = v_lo + (v_hi - v_lo) * frac
    return np.where((n_fin > 0)[..., None], q, np.nan)


# -- input handling --------------------------------------------------------------------------------


def _hour_buckets(frame: pd.DataFrame, time_column: str,
                  table: str) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """Bucket index of every row (shape (N,)) and the UTC hour of every bucket."""
    if time_column not in frame.columns:
        raise ContractError("missing time column", table=table, column=time_column)
    ts = frame[time_column]
    if not pd.api.types.is_datetime64_any_dtype(ts):
        raise ContractError(f"expected timestamps, got {ts.dtype}", table=table, column=time_column)
    ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    codes, hours = pd.factorize(ts.dt.floor("h"), sort=True)
    if (codes < 0).any():
        raise ContractError("null timestamps", table=table, column=time_column)
    return codes.astype(np.int64), pd.DatetimeIndex(hours)


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    for name in columns:
        if name not in frame.columns:
            raise ContractError("column not found", table=table, column=name)
        dtype = frame[name].dtype
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            raise ContractError(f"expected a numeric column, got {frame[name].dtype}", table=table,
                                column=name)


def _block_matrix(frame: pd.DataFrame, columns: Sequence[str], table: str) -> np.ndarray:
    """A (Cb, N) float32 copy of some columns (nulls as NaN)."""
    try:
        matrix = frame[list(columns)].to_numpy(dtype=np.float32, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"values are not numeric: {exc}", table=table,
                            column=columns[0]) from exc
    block = np.ascontiguousarray(matrix.T)
    # a read-only view of the frame's own memory must not be sorted in place
    return block if block.flags.writeable else block.copy()


def _column_index(all_columns: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    index = pd.Index(all_columns).get_indexer(list(wanted))
    if (index < 0).any():
        missing = [w for w, i in zip(wanted, index) if i < 0]
        raise KeyError(f"columns not summarized: {missing}")
    return index


def _scatter(shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
             fill) -> np.ndarray:
    out = np.full(shape, fill, dtype=values.dtype)
    out[rows, cols] = values
    return out
