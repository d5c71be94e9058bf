"""Telemetry in a SQL database (SQLAlchemy URL): one table per contract table.

The contract's SQL layout: partition keys are ordinary columns,
``training_runs.partitions`` is a JSON array string, and ``serving_samples``
/ ``training_data`` are single tables whose feature columns are the union over
models (NULL where a model lacks a feature). Reading one model (or dataset)
returns only its own feature columns, taken from ``model_features`` (through
``training_runs`` for datasets).

Filters become a WHERE clause of SQLAlchemy constructs with bound parameters
and quoted identifiers. Timestamps may be native (PostgreSQL) or ISO-8601
strings (SQLite); SQLite compares them through ``julianday`` (not exact to the
microsecond), so the time range is applied exactly once more on the result.
SQLite stores NaN as NULL, so a NaN read from it comes back null.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from hawkeye_dagster.contract import TABLES, Kind, TableSpec
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.conform import TIMESTAMP, conform, contract_schema, ordered_names
from hawkeye_dagster.lake.location import is_url, open_input
from hawkeye_dagster.lake.reader import TablePart, TelemetryReader, TimeRange, table_spec
from hawkeye_dagster.settings import redact_url

#: slack of SQLite's julianday comparisons (double-precision days), made exact afterwards
_JULIAN_SLACK_DAYS = 1e-6


def _kind(spec: TableSpec, name: str) -> Kind | None:
    """The contract kind of a column (``None`` for a feature or extra column)."""
    column = spec.columns_by_name.get(name)
    return column.kind if column is not None else None


class SqlLake(TelemetryReader):
    """Telemetry tables in the database at ``url`` (in ``schema``, else the default one).

    Besides the reader, it offers hooks for code that builds its own queries over the
    telemetry (:mod:`hawkeye_dagster.lake.pushdown`): :attr:`engine`, :attr:`is_sqlite`,
    :meth:`table` and :meth:`time_bounds`.

    Attributes
    ----------
    engine : sqlalchemy.Engine
        The database's engine.
    is_sqlite : bool
        Whether the database is SQLite (timestamps stored as ISO-8601 text, no NaN).
    """

    def __init__(self, url: str, *, schema: str | None = None):
        shown = redact_url(url)
        try:
            self.engine = sa.create_engine(url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise ContractError(f"cannot open SQL URL: {exc}", file=shown) from exc
        self._schema = schema
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.location = f"{shown} (schema {schema})" if schema else shown
        self._reflected: dict[str, sa.Table] = {}

    # -- catalog -------------------------------------------------------------

    def tables(self) -> set[str]:
        return set(sa.inspect(self.engine).get_table_names(schema=self._schema)) & set(TABLES)

    def table(self, spec: TableSpec) -> sa.Table | None:
        """The contract table ``spec`` as reflected from the database (``None`` for an absent
        optional table); raises :class:`ContractError` for an absent required one."""
        if spec.name not in self._reflected:
            try:
                self._reflected[spec.name] = sa.Table(spec.name, sa.MetaData(schema=self._schema),
                                                      autoload_with=self.engine)
            except sa.exc.NoSuchTableError:
                if spec.optional:
                    return None
                raise ContractError("table missing from the database", table=spec.name,
                                    file=self.location) from None
        return self._reflected[spec.name]

    def _where(self, spec: TableSpec) -> str:
        return f"{self.location} table {spec.name}"

    def _stored_type(self, spec: TableSpec, column: sa.Column) -> pa.DataType:
        """The Arrow type a column's values arrive as (before the contract's cast)."""
        kind = _kind(spec, column.name)
        sql_type = column.type
        if isinstance(sql_type, (sa.String, sa.JSON, sa.types.NullType)):
            if kind is Kind.STRING_LIST:
                return pa.list_(pa.string())  # the contract's JSON array string
            if kind is Kind.TIMESTAMP and self.is_sqlite:
                return TIMESTAMP  # ISO-8601 text
            return pa.null() if isinstance(sql_type, sa.types.NullType) else pa.string()
        if isinstance(sql_type, sa.DateTime):
            return TIMESTAMP
        if isinstance(sql_type, sa.Boolean):
            return pa.bool_()
        if isinstance(sql_type, sa.Integer):
            return pa.int64()
        if isinstance(sql_type, sa.REAL) and not self.is_sqlite:
            return pa.float32()
        if isinstance(sql_type, (sa.Float, sa.Numeric)):
            return pa.float64()
        return pa.string()

    def parts(self, table: str) -> list[TablePart]:
        spec = table_spec(table)
        t = self.table(spec)
        if t is None:
            return []
        schema = pa.schema([(c.name, self._stored_type(spec, c)) for c in t.columns])
        return [TablePart(table, self._where(spec), schema)]

    # -- reading -------------------------------------------------------------

    def _feature_columns(self, spec: TableSpec, t: sa.Table, ids: list[str]) -> list[str]:
        """The feature columns of these models (``serving_samples``) or datasets
        (``training_data``), from ``model_features``."""
        features = self.table(TABLES["model_features"])
        query = sa.select(features.c.feature_name).distinct()
        if spec.name == "serving_samples":
            query = query.where(features.c.model_id.in_(ids))
        else:
            runs = self.table(TABLES["training_runs"])
            query = query.where(features.c.model_id.in_(
                sa.select(runs.c.model_id).where(runs.c.dataset_id.in_(ids))))
        with self.engine.connect() as conn:
            names = set(conn.execute(query).scalars())
        if not names and spec.name == "training_data":  # a dataset no run names: keep them all
            names = set(t.columns.keys())
        return [n for n in t.columns.keys() if n in names and n not in spec.column_names]

    def _default_columns(self, spec: TableSpec, t: sa.Table, equals: dict | None,
                         isin: dict | None) -> list[str]:
        key = spec.partition_keys[0] if spec.feature_columns else None
        if key is not None and key in (equals or {}):
            ids = [str(equals[key])]
        elif key is not None and key in (isin or {}):
            ids = [str(v) for v in isin[key]]
        else:
            return ordered_names(spec, t.columns.keys())
        contract = [c for c in t.columns.keys() if c in spec.column_names]
        return ordered_names(spec, contract + self._feature_columns(spec, t, ids))

    def read_arrow(self, table: str, *, columns: Sequence[str] | None = None,
                   time_range: TimeRange | None = None, equals: dict | None = None,
                   isin: dict | None = None) -> pa.Table:
        spec = table_spec(table)
        t = self.table(spec)
        if t is None:
            empty = contract_schema(spec, columns or ()).empty_table()
            return empty.select(columns or spec.column_names)
        names = list(columns) if columns is not None else \
            self._default_columns(spec, t, equals, isin)
        missing = [c for c in [*names, *(equals or {}), *(isin or {})] if c not in t.c]
        if missing:
            raise ContractError("no such column in the table", table=spec.name,
                                file=self._where(spec), column=missing[0])
        timed = spec.time_column is not None and time_range is not None \
            and time_range.expression(spec.time_column) is not None
        fetched = names + [spec.time_column] if timed and spec.time_column not in names else names
        query = sa.select(*(self._select(spec, t.c[n]) for n in fetched))
        for key, value in (equals or {}).items():
            query = query.where(t.c[key] == value)
        for key, values in (isin or {}).items():
            query = query.where(t.c[key].in_(list(values)))
        if timed:
            query = query.where(*self.time_bounds(t.c[spec.time_column], time_range))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        result = self._to_arrow(spec, fetched, rows)
        if timed:
            result = result.filter(time_range.expression(spec.time_column)).select(names)
        return result

    def _select(self, spec: TableSpec, column: sa.Column):
        """The column as selected: SQLite timestamps as their raw text, parsed here."""
        if self.is_sqlite and _kind(spec, column.name) is Kind.TIMESTAMP:
            return sa.type_coerce(column, sa.String()).label(column.name)
        return column

    def time_bounds(self, column: sa.Column, time_range: TimeRange, *,
                    exact: bool = False) -> list:
        """``start <= column < end`` as WHERE conditions (none for an open side).

        On SQLite the ISO-8601 text is compared through ``julianday`` (double-precision days,
        about 40 microseconds apart). By default the bounds are widened by a slack so that no
        row in the range is lost, and the caller filters the result exactly again, as
        :meth:`read_arrow` does; ``exact=True`` gives the bounds without slack, for queries
        whose result cannot be filtered again (aggregates in the database).
        """
        slack = 0.0 if exact else _JULIAN_SLACK_DAYS
        bounds = []
        for value, compare, widen in ((time_range.start, operator.ge, -slack),
                                      (time_range.end, operator.lt, slack)):
            if value is None:
                continue
            if self.is_sqlite:
                bounds.append(compare(sa.func.julianday(column),
                                      sa.func.julianday(value.isoformat()) + widen))
            else:
                naive = isinstance(column.type, sa.DateTime) and not column.type.timezone
                bounds.append(compare(column, (value.tz_convert(None) if naive else value)
                                      .to_pydatetime()))
        return bounds

    def _to_arrow(self, spec: TableSpec, names: list[str], rows: list) -> pa.Table:
        where = self._where(spec)
        values = list(zip(*rows)) if rows else [()] * len(names)
        arrays = []
        for name, column in zip(names, values):
            kind = _kind(spec, name)
            try:
                if kind is Kind.TIMESTAMP:
                    arrays.append(pa.array(pd.to_datetime(pd.Series(column, dtype=object),
                                                          utc=True, format="ISO8601"),
                                           TIMESTAMP))
                elif kind is Kind.STRING_LIST:
                    arrays.append(pa.array([None if v is None else json.loads(v) for v in column],
                                           pa.list_(pa.string())))
                else:
                    arrays.append(pa.array(column, from_pandas=True))
            except (ValueError, TypeError, pa.ArrowException) as exc:
                raise ContractError(f"unreadable values: {exc}", table=spec.name, file=where,
                                    column=name) from exc
        return conform(pa.table(arrays, names=names), spec, location=where)

    def read_part(self, part: TablePart, columns: Sequence[str] | None = None) -> pa.Table:
        stored = ordered_names(table_spec(part.table), part.schema.names)
        return self.read_arrow(part.table, columns=stored if columns is None else
                               [c for c in columns if c in stored])

    def serving_columns(self, model_id: str) -> list[str]:
        spec = TABLES["serving_samples"]
        return self._default_columns(spec, self.table(spec), {"model_id": model_id}, None)

    # -- artifacts -----------------------------------------------------------

    def resolve_artifact(self, artifact: str) -> str:
        if not (is_url(artifact) or artifact.startswith("/")):
            raise ContractError("artifacts in a SQL lake must be absolute paths or URLs",
                                table="snapshots", file=artifact, column="artifact")
        return artifact

    def open_artifact(self, artifact: str):
        return open_input(self.resolve_artifact(artifact))
