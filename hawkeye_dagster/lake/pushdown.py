"""Hourly aggregates of numeric columns computed by the database, for telemetry in SQL.

Reading a day of serving samples into pandas to summarize it moves every row out of the
warehouse; :func:`hourly_aggregates` sends one ``GROUP BY hour`` query per block of columns
instead, so only one row per hour comes back. Statistics match
:func:`hawkeye_dagster.analysis.feature_stats.hourly_stats` on the same data (to float
tolerance): nulls and NaNs are counted as missing, infinities counted apart, and every other
statistic is over the finite values. Quantiles use ``percentile_cont`` (linear interpolation,
numpy's default) where the dialect has it (PostgreSQL); elsewhere (SQLite) only the time
column and the requested columns are pulled and the quantiles computed here.

Queries are SQLAlchemy Core with bound parameters and quoted identifiers, so feature names
with quotes, dots or non-ASCII letters need no care.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from hawkeye_dagster.analysis.feature_stats import QUANTILE_NAMES, QUANTILES
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.reader import TimeRange, table_spec
from hawkeye_dagster.lake.sql import SqlLake

#: columns summarized per query (PostgreSQL allows 1664 select items; each column takes 8)
COLUMNS_PER_QUERY = 150
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
    spec = table_spec(table)
    if spec.time_column is None:
        raise ContractError("table has no time column to group by hour", table=table)
    t = lake.table(spec)
    if t is None:
        return _empty(quantiles)
    missing = [c for c in [*columns, *(equals or {})] if c not in t.c]
    if missing:
        raise ContractError("no such column in the table", table=table, column=missing[0])
    hour = _hour(lake, t.c[spec.time_column])
    where = [t.c[k] == v for k, v in (equals or {}).items()]
    if time_range is not None:
        where += lake.time_bounds(t.c[spec.time_column], time_range, exact=True)
    in_sql = quantiles and lake.engine.dialect.name == "postgresql"
    frames = [_query(lake, t, hour, where, columns[i:i + COLUMNS_PER_QUERY], in_sql)
              for i in range(0, len(columns), COLUMNS_PER_QUERY)]
    result = pd.concat(frames, ignore_index=True) if frames else _empty(quantiles)
    if quantiles and not in_sql and len(result):
        result = result.merge(_pulled_quantiles(lake, t, hour, where, columns),
                              on=[HOUR, "column"], how="left")
    return _derived(result)


def _hour(lake: SqlLake, ts: sa.Column):
    """The UTC hour of a timestamp, as the database computes it."""
    if lake.is_sqlite:  # ISO-8601 text with any offset; strftime converts to UTC
        return sa.func.strftime("%Y-%m-%dT%H:00:00Z", ts)
    return sa.func.date_trunc("hour", sa.func.timezone("UTC", ts))


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


def _query(lake: SqlLake, t: sa.Table, hour, where: list, columns: Sequence[str],
           in_sql: bool) -> pd.DataFrame:
    """One GROUP BY hour query for a block of columns, reshaped to (hour, column) rows."""
    select = [hour.label(HOUR)]
    for i, name in enumerate(columns):
        select += [part.label(f"c{i}_{k}") for k, part in enumerate(_aggregates(t.c[name], in_sql))]
    query = sa.select(*select).where(*where).group_by(hour)
    with lake.engine.connect() as conn:
        rows = conn.execute(query).all()
    width = len(SUMS) + in_sql
    values = np.array([r[1:] for r in rows], dtype=object).reshape(len(rows), len(columns), width)
    frame = pd.DataFrame(values.reshape(-1, width),
                         columns=[*SUMS, *(["quantiles"] if in_sql else [])])
    frame.insert(0, "column", np.tile(np.asarray(columns, dtype=object), len(rows)))
    frame.insert(0, HOUR, np.repeat(pd.to_datetime([r[0] for r in rows], utc=True), len(columns)))
    if in_sql:
        q = np.array([v if v is not None else [np.nan] * len(QUANTILES)
                      for v in frame.pop("quantiles")], dtype=np.float64).reshape(-1, len(QUANTILES))
        frame[list(QUANTILE_NAMES)] = q
    return frame


def _pulled_quantiles(lake: SqlLake, t: sa.Table, hour, where: list,
                      columns: Sequence[str]) -> pd.DataFrame:
    """Quantiles where the database has no ``percentile_cont``: only the hour and the
    columns' finite values leave it, and pandas computes them (linear interpolation)."""
    query = sa.select(hour.label(HOUR), *(_finite(t.c[c])[0].label(f"c{i}")
                                          for i, c in enumerate(columns))).where(*where)
    with lake.engine.connect() as conn:
        frame = pd.DataFrame(conn.execute(query).all(),
                             columns=[HOUR, *(f"c{i}" for i in range(len(columns)))])
    frame[HOUR] = pd.to_datetime(frame[HOUR], utc=True)
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
