"""Hourly aggregates of numeric columns computed by the database, for telemetry in SQL.

Reading a day of serving samples into pandas to summarize it moves every row out of the
warehouse; :func:`hourly_aggregates` sends one ``GROUP BY hour`` query per block of columns
instead, so only one row per hour comes back. Statistics match
:func:`hawkeye_dagster.analysis.feature_stats.hourly_stats` on the same data (to float
tolerance): nulls and NaNs are counted as missing, infinities counted apart, and every other
statistic is over the finite values. Quantiles use ``percentile_cont`` (linear interpolation,
numpy's default) where the dialect has it (PostgreSQL); elsewhere (SQLite) only the time
column and the requested columns are pulled and the quantiles computed here.
:func:`hourly_histograms` counts and sums the finite values in fixed bins per hour with the
bins of ``hourly_stats``; :mod:`hawkeye_dagster.gather.pushdown_stats` joins both into its
``FeatureStats``.

Queries are SQLAlchemy Core with bound parameters and quoted identifiers, so feature names
with quotes, dots or non-ASCII letters need no care. Hours and time ranges come from
:class:`~hawkeye_dagster.lake.sql.SqlLake`, which decodes every timestamp encoding the
contract allows (native with or without time zone, SQLite ISO-8601 text or Unix epochs) into
UTC, whatever the session time zone; a timestamp it cannot decode is refused, not dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.reader import table_spec
from hawkeye_dagster.lake.sql import SqlLake
from hawkeye_dagster.summary_shape import QUANTILE_NAMES, QUANTILES, check_edges
from hawkeye_dagster.time_range import TimeRange

#: columns summarized per query (PostgreSQL allows 1664 select items; each column takes 8)
COLUMNS_PER_QUERY = 150
#: bins per histogram statement, all columns together (SQLite binds about two values per bin,
#: and allows 32766), and columns per statement at most (SQLite allows 500 UNION ALL branches)
BINS_PER_QUERY = 6000
HISTOGRAM_COLUMNS_PER_QUERY = 500
SUMS = ("count", "n_null", "n_inf", "n_finite", "sum", "sum_sq", "min", "max")
HOUR = "hour"


def hourly_aggregates(lake: SqlLake, table: str, columns: Sequence[str], *,
                      time_range: TimeRange | None = None,
                      equals: dict[str, object] | None = None,
                      quantiles: bool = True) -> pd.DataFrame:
    """Per-UTC-hour aggregates of numeric ``columns`` of ``table``, computed in the database.

    Parameters
    ----------
    lake : SqlLake
        The telemetry database.
    table : str
        A contract table with a time column (``serving_samples``, ``lineage_node_stats``...).
    columns : sequence of str, length C
        Numeric columns (feature names as stored, ``prediction``, ``value``...).
    time_range, equals
        Filters, as :meth:`~hawkeye_dagster.lake.reader.TelemetryReader.read_arrow` takes them
        (``equals={"model_id": m}`` for one model's samples).
    quantiles : bool
        Also compute ``p1`` .. ``p99`` of the finite values.

    Returns
    -------
    DataFrame, one row per (hour, column) with any row
        ``hour`` (tz-aware UTC), ``column``, ``count`` (rows), ``n_null`` (null or NaN),
        ``n_inf``, ``n_finite``, ``sum``, ``sum_sq``, ``min``, ``max``, ``mean``, ``std``
        (population) and, with ``quantiles``, ``p1`` .. ``p99``; statistics of an hour without
        a finite value are NaN.
    """
    scope = _scope(lake, table, columns, time_range, equals)
    if scope is None:
        return _empty(quantiles)
    in_sql = quantiles and lake.engine.dialect.name == "postgresql"
    frames = [_query(scope, columns[i:i + COLUMNS_PER_QUERY], in_sql)
              for i in range(0, len(columns), COLUMNS_PER_QUERY)]
    result = pd.concat(frames, ignore_index=True) if frames else _empty(quantiles)
    if quantiles and not in_sql and len(result):
        result = result.merge(_pulled_quantiles(scope, columns), on=[HOUR, "column"],
                              how="left")
    return _derived(result)


def hourly_histograms(lake: SqlLake, table: str, columns: Sequence[str], edges: np.ndarray, *,
                      time_range: TimeRange | None = None,
                      equals: dict[str, object] | None = None) -> pd.DataFrame:
    """Per-UTC-hour histograms of the finite values of ``columns`` on fixed bins, computed in
    the database, with the bins of :func:`~hawkeye_dagster.analysis.feature_stats.hourly_stats`.

    Bin ``k`` holds the values with ``edges[k - 1] <= v < edges[k]`` (open-ended at both ends)
    once ``v`` is rounded to float32, as the pandas path rounds it: the database compares the
    unrounded value with :func:`bin_thresholds`, so no value near an edge changes bin.
    PostgreSQL finds the bin with ``width_bucket`` (a binary search), other databases with a
    ``CASE`` ladder.

    Each column's bin is its own grouping key, so each column is one ``GROUP BY hour, bin``
    branch of a ``UNION ALL``: one statement per block of columns (bounded in size and in
    branches), and at most H x B rows per column come back, however many samples there are.

    Parameters
    ----------
    lake, table, time_range, equals
        As :func:`hourly_aggregates` takes them (the same rows are summarized).
    columns : sequence of str, length C
        Numeric columns.
    edges : array, shape (C, B - 1)
        Bin edges per column, finite and ascending (a reference profile's).

    Returns
    -------
    DataFrame, one row per (hour, column, bin) holding a finite value
        ``hour`` (tz-aware UTC), ``column``, ``bin`` (0 .. B - 1), ``count`` and ``sum`` of
        the bin's values.
    """
    thresholds = bin_thresholds(check_edges(edges, len(columns)))
    scope = _scope(lake, table, columns, time_range, equals)
    if scope is None:
        return _empty_histograms()
    width = max(1, min(HISTOGRAM_COLUMNS_PER_QUERY, BINS_PER_QUERY // (thresholds.shape[1] + 1)))
    rows = []
    for start in range(0, len(columns), width):
        block = range(start, min(start + width, len(columns)))
        if lake.is_sqlite:  # its timestamps decode slowly: once per row, into one CTE that
            # SQLite materializes for all the branches
            shared = _finite_rows(scope, [columns[k] for k in block]).cte("scoped")
            sources = [(shared, f"v{i}") for i in range(len(block))]
        else:  # each branch its own scan, as the planner likes best
            sources = [(_finite_rows(scope, [columns[k]]).subquery(), "v0") for k in block]
        query = sa.union_all(*(_histogram(scope, source, value, k, thresholds[k])
                               for (source, value), k in zip(sources, block)))
        with lake.engine.connect() as conn:
            rows += conn.execute(query).all()
    if not rows:
        return _empty_histograms()
    frame = pd.DataFrame(rows, columns=["column", HOUR, "bin", "count", "sum"])
    frame["column"] = np.asarray(columns, dtype=object)[frame["column"].to_numpy(np.int64)]
    frame[HOUR] = scope.hours(frame[HOUR])
    return frame.astype({"bin": np.int64, "count": np.int64, "sum": np.float64})[
        [HOUR, "column", "bin", "count", "sum"]]


def bin_thresholds(edges: np.ndarray) -> np.ndarray:
    """Float64 lower bounds that bin values as :func:`hourly_stats` bins their float32 roundings.

    A value rounds (to nearest, ties to even) to a float32 at or above the float32 edge ``e``
    exactly when it is at or above the midpoint between ``e`` and the float32 below ``e``; the
    midpoint itself rounds to ``e`` only when ``e``'s last significand bit is 0. The midpoint
    is exact in float64, so ``value >= threshold`` in the database needs no rounding, whether
    the column is stored as float32 or float64.

    Parameters
    ----------
    edges : array, shape (C, B - 1)
        Ascending float32 bin edges.

    Returns
    -------
    float64 array, shape (C, B - 1)
        Ascending per column; the bin of a value is the number of thresholds at or below it.
    """
    edge = np.asarray(edges, np.float32) + np.float32(0)  # -0.0 as +0.0, as hourly_stats has it
    below = np.nextafter(edge, np.float32(-np.inf)).astype(np.float64)
    midpoint = (edge.astype(np.float64) + below) / 2
    ties_to_edge = (edge.view(np.uint32) & 1) == 0
    return np.where(ties_to_edge, midpoint, np.nextafter(midpoint, np.inf))


@dataclass(frozen=True)
class _Scope:
    """The rows of a request, shared by every push-down query so that they see the same rows:
    the table, its time column, the hour expression and the WHERE conditions."""

    lake: SqlLake
    table: sa.Table
    ts: sa.Column
    hour: sa.ColumnElement
    where: list

    def hours(self, values) -> pd.DatetimeIndex:
        """Values of :attr:`hour` as tz-aware UTC; a NULL hour is a timestamp that does not
        decode (rows without a timestamp are out of scope), refused with what it holds."""
        hours = self.lake.instants(values)
        if hours.null_count:
            self.lake.refuse_undecodable(self.ts, self.where)
        return pd.DatetimeIndex(hours.to_pandas())


def _scope(lake: SqlLake, table: str, columns: Sequence[str], time_range: TimeRange | None,
           equals: dict[str, object] | None) -> _Scope | None:
    """The scope of a request (``None`` for an absent optional table). Rows without a
    timestamp are left out, as grouping by hour in pandas leaves them out."""
    spec = table_spec(table)
    if spec.time_column is None:
        raise ContractError("table has no time column to group by hour", table=table)
    t = lake.table(spec)
    if t is None:
        return None
    missing = [c for c in [*columns, *(equals or {})] if c not in t.c]
    if missing:
        raise ContractError("no such column in the table", table=table, column=missing[0])
    ts = t.c[spec.time_column]
    where = [t.c[k] == v for k, v in (equals or {}).items()] + [ts.is_not(None)]
    if time_range is not None:
        where += lake.time_bounds(ts, time_range)
    return _Scope(lake, t, ts, lake.utc_hour(ts), where)


def _finite(column: sa.Column):
    """``(value if finite else NULL as double, is-missing flag, is-infinite flag)``.

    PostgreSQL makes ``NaN = NaN`` true; SQLite stores NaN as NULL (and binds NaN as NULL).
    """
    value = sa.cast(column, sa.Double())
    missing = sa.or_(column.is_(None), value == sa.literal(float("nan"), sa.Double()))
    infinite = sa.func.abs(value) == sa.literal(float("inf"), sa.Double())
    return sa.case((sa.or_(missing, infinite), None), else_=value), missing, infinite


def _aggregates(column: sa.Column, in_sql: bool) -> list:
    finite, missing, infinite = _finite(column)
    parts = [sa.func.count(), sa.func.sum(sa.case((missing, 1), else_=0)),
             sa.func.sum(sa.case((infinite, 1), else_=0)), sa.func.count(finite),
             sa.func.sum(finite), sa.func.sum(finite * finite), sa.func.min(finite),
             sa.func.max(finite)]
    if in_sql:
        levels = sa.literal(list(QUANTILES), postgresql.ARRAY(sa.Double()))
        parts.append(sa.func.percentile_cont(levels).within_group(finite))
    return parts


def _query(scope: _Scope, columns: Sequence[str], in_sql: bool) -> pd.DataFrame:
    """One GROUP BY hour query for a block of columns, reshaped to (hour, column) rows."""
    select = [scope.hour.label(HOUR)]
    for i, name in enumerate(columns):
        select += [part.label(f"c{i}_{k}")
                   for k, part in enumerate(_aggregates(scope.table.c[name], in_sql))]
    query = sa.select(*select).where(*scope.where).group_by(scope.hour)
    with scope.lake.engine.connect() as conn:
        rows = conn.execute(query).all()
    width = len(SUMS) + in_sql
    values = np.array([r[1:] for r in rows], dtype=object).reshape(len(rows), len(columns), width)
    frame = pd.DataFrame(values.reshape(-1, width),
                         columns=[*SUMS, *(["quantiles"] if in_sql else [])])
    frame.insert(0, "column", np.tile(np.asarray(columns, dtype=object), len(rows)))
    frame.insert(0, HOUR, scope.hours([r[0] for r in rows]).repeat(len(columns)))
    if in_sql:
        q = np.array([v if v is not None else [np.nan] * len(QUANTILES)
                      for v in frame.pop("quantiles")], dtype=np.float64).reshape(-1, len(QUANTILES))
        frame[list(QUANTILE_NAMES)] = q
    return frame


def _finite_rows(scope: _Scope, columns: Sequence[str]) -> sa.Select:
    """The hour and the finite values (``v0``, ``v1``, ...) of ``columns`` in the rows in
    scope."""
    return sa.select(scope.hour.label(HOUR), *(_finite(scope.table.c[c])[0].label(f"v{i}")
                                               for i, c in enumerate(columns))
                     ).where(*scope.where)


def _histogram(scope: _Scope, rows: sa.FromClause, name: str, index: int,
               thresholds: np.ndarray) -> sa.Select:
    """One column's ``GROUP BY hour, bin`` branch over its finite values (column ``name`` of
    :func:`_finite_rows` ``rows``), named by ``index``.

    The bin is a column of a subquery, grouped by, so its expression (with its bound
    thresholds) appears once in the statement.
    """
    value = rows.c[name]
    if scope.lake.engine.dialect.name == "postgresql":
        bin_ = sa.func.width_bucket(value, sa.literal(thresholds.tolist(),
                                                      postgresql.ARRAY(sa.Double())))
    elif len(thresholds):
        bin_ = sa.case(*((value < bound, k) for k, bound in enumerate(thresholds.tolist())),
                       else_=len(thresholds))
    else:
        bin_ = sa.literal(0)
    binned = sa.select(rows.c[HOUR], bin_.label("bin"), value.label("value")).where(
        value.is_not(None)).subquery()
    return (sa.select(sa.literal(index, sa.Integer()).label("column"), binned.c[HOUR],
                      binned.c.bin, sa.func.count().label("count"),
                      sa.func.sum(binned.c.value).label("sum"))
            .group_by(binned.c[HOUR], binned.c.bin))


def _pulled_quantiles(scope: _Scope, columns: Sequence[str]) -> pd.DataFrame:
    """Quantiles where the database has no ``percentile_cont``: only the hour and the
    columns' finite values leave it, and pandas computes them (linear interpolation)."""
    with scope.lake.engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(_finite_rows(scope, columns)).all(),
                             columns=[HOUR, *(f"v{i}" for i in range(len(columns)))])
    frame[HOUR] = scope.hours(frame[HOUR])
    values = frame.drop(columns=HOUR).astype(np.float64)
    q = values.groupby(frame[HOUR]).quantile(list(QUANTILES))  # (hour, level) x column
    q.columns = list(columns)
    q = q.stack().unstack(1)  # (hour, column) x level
    q.columns = list(QUANTILE_NAMES)
    return q.rename_axis([HOUR, "column"]).reset_index()


def _derived(frame: pd.DataFrame) -> pd.DataFrame:
    """Typed counts, and the mean and population std from the sums."""
    for name in ("count", "n_null", "n_inf", "n_finite"):
        frame[name] = frame[name].astype(np.int64)
    for name in ("sum", "sum_sq", "min", "max"):
        frame[name] = frame[name].astype(np.float64)
    n = frame["n_finite"].where(frame["n_finite"] > 0)
    frame["mean"] = frame["sum"] / n
    frame["std"] = np.sqrt((frame["sum_sq"] / n - frame["mean"] ** 2).clip(lower=0))
    return frame.sort_values([HOUR, "column"], ignore_index=True)


def _empty(quantiles: bool) -> pd.DataFrame:
    names = [HOUR, "column", *SUMS, *(QUANTILE_NAMES if quantiles else ())]
    frame = pd.DataFrame({n: pd.Series(dtype=np.float64) for n in names})
    frame[HOUR] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["column"] = pd.Series(dtype=object)
    return frame


def _empty_histograms() -> pd.DataFrame:
    return pd.DataFrame({HOUR: pd.Series(dtype="datetime64[ns, UTC]"),
                         "column": pd.Series(dtype=object), "bin": pd.Series(dtype=np.int64),
                         "count": pd.Series(dtype=np.int64), "sum": pd.Series(dtype=np.float64)})
