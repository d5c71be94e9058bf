"""Feature statistics of a model's serving samples, read from the lake one UTC day at a time.

Memory holds one day of samples (plus small row samples), whatever the span:
bin edges come from rows sampled evenly across the days they are learned
from, then every day is summarized on those edges and the days are joined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.feature_stats import (N_BINS, PREDICTION, FeatureStats,
                                                    ReferenceProfile, hourly_stats,
                                                    reference_edges)
from hawkeye_dagster.errors import UnknownIdError
from hawkeye_dagster.gather.pushdown_stats import hourly_feature_stats
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.lake.sql import SqlLake
from hawkeye_dagster.time_range import TimeRange

#: rows sampled across the days that bin edges are learned from
EDGE_ROWS = 100_000


@dataclass(frozen=True)
class SpanStats:
    """Hourly statistics of a span, and rows sampled from it (features, ``ts``, ``snapshot_id``)."""

    stats: FeatureStats
    samples: pd.DataFrame


def model_features(reader: TelemetryReader, model_id: str) -> list[str]:
    """The model's input features in input order."""
    rows = reader.read("model_features", equals={"model_id": model_id})
    if rows.empty:
        raise UnknownIdError(f"model {model_id!r} has no rows in model_features")
    return rows.sort_values("position")["feature_name"].tolist()


def days(span: TimeRange) -> list[TimeRange]:
    """The UTC days covering ``[span.start, span.end)``, clipped to it."""
    start, end = span.start, span.end
    bounds = pd.date_range(start.floor("D"), end, freq="D").append(pd.DatetimeIndex([end]))
    return [TimeRange(max(a, start), b) for a, b in zip(bounds[:-1], bounds[1:])
            if b > max(a, start)]


def lake_edges(reader: TelemetryReader, model_id: str, features: list[str], span: TimeRange, *,
               n_bins: int = N_BINS, rows: int = EDGE_ROWS,
               rng: np.random.Generator | None = None) -> np.ndarray | None:
    """Bin edges of the features and ``prediction`` (shape (F + 1, n_bins - 1)) from up to
    ``rows`` rows sampled evenly over the span's days; ``None`` when it has no samples."""
    rng = rng or np.random.default_rng(0)
    spans = days(span)
    parts = [_sample(_read(reader, model_id, features, day), rows // max(len(spans), 1), rng)
             for day in spans]
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    return reference_edges(pd.concat(parts, ignore_index=True), [*features, PREDICTION], n_bins)


def lake_stats(reader: TelemetryReader, model_id: str, features: list[str], span: TimeRange,
               edges: np.ndarray, *, sample_rows: int = 0, split: pd.Timestamp | None = None,
               rng: np.random.Generator | None = None) -> SpanStats | None:
    """Hourly statistics of the features and ``prediction`` over the span, on ``edges``.

    Also samples up to ``sample_rows`` rows before ``split`` and as many from
    ``split`` on (evenly over the days). ``None`` when the span has no samples.
    """
    rng = rng or np.random.default_rng(0)
    spans = days(span)
    per_day = -(-sample_rows // max(len(spans), 1))
    parts, samples = [], []
    for day in spans:
        rows = _read(reader, model_id, features, day)
        if rows.empty:
            continue
        parts.append(hourly_stats(rows, [*features, PREDICTION], edges))
        if sample_rows:
            after = rows["ts"] >= split if split is not None else np.zeros(len(rows), bool)
            samples += [_sample(rows[~after], per_day, rng), _sample(rows[after], per_day, rng)]
    if not parts:
        return None
    sampled = pd.concat(samples, ignore_index=True) if samples else pd.DataFrame()
    return SpanStats(FeatureStats.concat(parts), sampled)


def lake_hourly_stats(reader: TelemetryReader, model_id: str, time_range: TimeRange,
                      columns: list[str], edges: np.ndarray) -> FeatureStats | None:
    """Hourly statistics of a model's ``columns`` (shape (C,)) over ``time_range`` on ``edges``
    (shape (C, B - 1)); ``None`` when it served nothing then.

    Telemetry in a SQL database is summarized by the database, so only per-hour aggregates
    and histograms leave it (:func:`~hawkeye_dagster.gather.pushdown_stats.hourly_feature_stats`;
    SQLite, lacking ``percentile_cont``, also hands over the finite values for the quantiles);
    a Parquet lake's rows are read and summarized here, a day at a time. Both paths give the
    same statistics.
    """
    if isinstance(reader, SqlLake):
        return hourly_feature_stats(reader, columns, edges, time_range=time_range,
                                    equals={"model_id": model_id})
    parts = []
    for day in days(time_range):
        rows = reader.serving_samples(model_id, day, columns=["ts", *columns], ordered=False)
        if len(rows):
            parts.append(hourly_stats(rows, columns, edges))
    return FeatureStats.concat(parts) if parts else None


def lake_reference(reader: TelemetryReader, model_id: str, span: TimeRange, *,
                   n_bins: int = N_BINS, edge_rows: int = EDGE_ROWS) -> ReferenceProfile | None:
    """The reference profile of a window of the lake: edges from sampled rows, then the
    window's hourly statistics on them (computed by the database for SQL telemetry)."""
    features = model_features(reader, model_id)
    edges = lake_edges(reader, model_id, features, span, n_bins=n_bins, rows=edge_rows)
    if edges is None:
        return None
    return ReferenceProfile(edges, lake_hourly_stats(reader, model_id, span,
                                                     [*features, PREDICTION], edges))


def _read(reader: TelemetryReader, model_id: str, features: list[str],
          span: TimeRange) -> pd.DataFrame:
    return reader.serving_samples(model_id, span,
                                  columns=["ts", "snapshot_id", PREDICTION, *features])


def _sample(rows: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(rows) <= n:
        return rows
    return rows.iloc[np.sort(rng.choice(len(rows), n, replace=False))]
