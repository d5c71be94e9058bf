"""Hourly feature statistics from a database's aggregates: the warehouse twin of ``hourly_stats``.

:func:`hourly_feature_stats` joins the raw per-hour aggregates and histograms that
:mod:`hawkeye_dagster.lake.pushdown` has the database compute into the
:class:`~hawkeye_dagster.analysis.feature_stats.FeatureStats` that
:func:`~hawkeye_dagster.analysis.feature_stats.hourly_stats` computes in pandas from the same
rows: same hours, columns, counts and histogram bins; moments and quantiles to float
tolerance (the database works on the stored doubles, pandas on float32 values). Drift, health
checks and storage downstream cannot tell the two paths apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.feature_stats import COUNT_STATS, VALUE_STATS, FeatureStats
from hawkeye_dagster.lake.conform import TIMESTAMP
from hawkeye_dagster.lake.pushdown import HOUR, hourly_aggregates, hourly_histograms
from hawkeye_dagster.lake.sql import SqlLake
from hawkeye_dagster.time_range import TimeRange


def hourly_feature_stats(lake: SqlLake, columns: Sequence[str], edges: np.ndarray, *,
                         table: str = "serving_samples", time_range: TimeRange | None = None,
                         equals: dict[str, object] | None = None) -> FeatureStats | None:
    """Statistics of ``columns`` per UTC hour, as ``hourly_stats`` gives them, from the database.

    Parameters
    ----------
    lake : SqlLake
        The telemetry database.
    columns : sequence of str, length C
        Numeric columns (a model's features and ``prediction``).
    edges : array, shape (C, B - 1)
        Histogram bin edges per column, ascending (a reference profile's).
    table, time_range, equals
        The rows summarized (``equals={"model_id": m}`` and a day for one model-day).

    Returns
    -------
    FeatureStats or None
        ``None`` when no row matches. The database returns one row per hour and query for
        the aggregates and one per (hour, column, non-empty bin) for the histograms.
    """
    aggregates = hourly_aggregates(lake, table, columns, time_range=time_range, equals=equals)
    if aggregates.empty:
        return None
    histograms = hourly_histograms(lake, table, columns, edges, time_range=time_range,
                                   equals=equals)
    hours = pd.DatetimeIndex(aggregates[HOUR].drop_duplicates().sort_values())
    shape = (len(hours), len(columns))
    at = _cells(aggregates, hours, columns)
    counts = {k: _grid(shape, at, aggregates[k].to_numpy(np.int64), 0) for k in COUNT_STATS}
    # min and max as hourly_stats has them, float32: rounding is monotone, so they are exact
    values = {k: _grid(shape, at, aggregates[k].to_numpy(
        np.float32 if k in ("min", "max") else np.float64), np.nan) for k in VALUE_STATS}
    bins = (*_cells(histograms, hours, columns), histograms["bin"].to_numpy(np.int64))
    n_bins = np.shape(edges)[1] + 1
    return FeatureStats(
        hours=hours.as_unit(TIMESTAMP.unit),  # the reader's unit: stored statistics match
        columns=tuple(columns),
        counts=counts,
        values=values,
        hist_count=_grid((*shape, n_bins), bins, histograms["count"].to_numpy(np.int64), 0),
        hist_sum=_grid((*shape, n_bins), bins, histograms["sum"].to_numpy(np.float64), 0.0),
    )


def _cells(frame: pd.DataFrame, hours: pd.DatetimeIndex,
           columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hour, column) indices of a long frame's rows, each of shape (rows,)."""
    return hours.get_indexer(frame[HOUR]), pd.Index(columns).get_indexer(frame["column"])


def _grid(shape: tuple[int, ...], at: tuple[np.ndarray, ...], values: np.ndarray,
          fill) -> np.ndarray:
    """``values`` placed at the indices ``at`` of an array of ``shape`` filled with ``fill``."""
    out = np.full(shape, fill, dtype=values.dtype)
    out[at] = values
    return out
