"""Telemetry in a SQL database (SQLAlchemy URL): one table per contract table.

The contract's SQL layout: partition keys are ordinary columns,
``training_runs.partitions`` is a JSON array string (or a JSON column), and ``serving_samples``
/ ``training_data`` are single tables whose feature columns are the union over
models (NULL where a model lacks a feature). Reading one model (or dataset)
returns only its own feature columns, taken from ``model_features`` (through
``training_runs`` for datasets).

Filters become a WHERE clause of SQLAlchemy constructs with bound parameters
and quoted identifiers. Timestamps are decoded by the database, so that reads, time-range
filters and the hourly buckets of :mod:`hawkeye_dagster.lake.pushdown` agree to the
nanosecond:

- native ``TIMESTAMP WITH TIME ZONE`` and ``TIMESTAMP WITHOUT TIME ZONE`` (naive meaning
  UTC, whatever the session time zone) are compared as they are;
- on SQLite, where a column of any declared type may hold any value, each value is decoded
  by its storage class into Unix nanoseconds: ISO-8601 text (see :data:`SQLITE_TIMESTAMPS`)
  or a Unix epoch number whose unit is told by its magnitude (:data:`EPOCH_UNITS`).

A stored timestamp that is none of these (or lies outside :data:`EARLIEST` ..
:data:`LATEST`, what nanosecond timestamps hold) is refused with a
:class:`~hawkeye_dagster.errors.ContractError` that shows it, never dropped: time-range
filters keep the rows they cannot place in time, so that they are seen. SQLite stores NaN
as NULL, so a NaN read from it comes back null.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from hawkeye_dagster.contract import TABLES, Kind, TableSpec
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.conform import TIMESTAMP, conform, contract_schema, ordered_names
from hawkeye_dagster.lake.location import is_absolute, open_input
from hawkeye_dagster.lake.reader import TablePart, TelemetryReader, known_tables, table_spec
from hawkeye_dagster.settings import redact_url
from hawkeye_dagster.time_range import TimeRange

#: the instants a stored timestamp may hold, ``[EARLIEST, LATEST)``: whole days inside the
#: range of nanosecond timestamps
EARLIEST = pd.Timestamp("1677-09-22", tz="UTC")
LATEST = pd.Timestamp("2262-04-11", tz="UTC")
#: the unit of a Unix epoch number, told by its magnitude: ``(below, nanoseconds per unit)``,
#: the first that fits; ``None``: any larger number. Seconds below 1e11, milliseconds below
#: 1e14, microseconds below 1e17, else nanoseconds, so that an instant from 1973-03-03 on
#: reads right in any of these units. Integers are exact; REAL numbers are read to the
#: microsecond (a double holds no more of a present-day epoch in seconds).
EPOCH_UNITS = ((10**11, 10**9), (10**14, 10**6), (10**17, 10**3), (None, 1))
#: what a SQLite timestamp may be, for error messages
SQLITE_TIMESTAMPS = ("ISO-8601 text 'YYYY-MM-DD', or 'YYYY-MM-DD' then 'T' or a space and "
                     "'HH:MM', 'HH:MM:SS' or 'HH:MM:SS.fff' (any number of digits, kept to the "
                     "nanosecond), then 'Z', '+HH:MM', '-HH:MM' or nothing (UTC), in the years "
                     "1678 to 2261; or a Unix epoch number in seconds (below 1e11), "
                     "milliseconds (below 1e14), microseconds (below 1e17) or nanoseconds")
NATIVE_TIMESTAMPS = "TIMESTAMP WITH TIME ZONE or TIMESTAMP WITHOUT TIME ZONE (meaning UTC)"
_NS_PER_SECOND = 10**9
_UNIX_JD = 2440587.5  # the Julian day of 1970-01-01T00:00Z
_HOUR_NS = 3600 * _NS_PER_SECOND


def _kind(spec: TableSpec, name: str) -> Kind | None:
    """The contract kind of a column (``None`` for a feature or extra column)."""
    column = spec.columns_by_name.get(name)
    return column.kind if column is not None else None


def _inline(value) -> sa.ColumnElement:
    """A constant written into the statement, not bound: the timestamp decoder repeats in
    every branch of a push-down statement, and SQLite binds at most 32766 values."""
    return sa.literal(value, literal_execute=True)


def _epoch_ns(number: sa.ColumnElement, to_ns) -> sa.ColumnElement:
    """A Unix epoch number as nanoseconds, its unit by :data:`EPOCH_UNITS`; NULL outside
    :data:`EARLIEST` .. :data:`LATEST`. ``to_ns(number, ns_per_unit)`` converts; the range is
    checked on the number first, so that the conversion cannot overflow."""
    whens = []
    for below, per_unit in EPOCH_UNITS:
        whens.append((sa.and_(number >= _inline(EARLIEST.value // per_unit),
                              number < _inline(LATEST.value // per_unit)),
                      to_ns(number, per_unit)))
        if below is not None:
            whens.append((sa.and_(number > _inline(-below), number < _inline(below)), sa.null()))
    return sa.case(*whens, else_=sa.null())


def _iso_text_ns(text: sa.ColumnElement) -> sa.ColumnElement:
    """SQLite ISO-8601 text as Unix nanoseconds, NULL where it is not one of
    :data:`SQLITE_TIMESTAMPS` (or not a real calendar day, or not in the years 1678 .. 2261,
    which lie inside :data:`EARLIEST` .. :data:`LATEST` whatever the zone).

    SQLite's date functions round to the millisecond, so they read the whole seconds from the
    text without its fraction (``YYYY-MM-DD HH:MM:SS`` then the zone), and the fraction is
    added to the nanosecond (a double holds nine decimals of a fraction closely enough to
    round right). Text that SQLite cannot parse gives NULL seconds, so a NULL sum. Each part
    is written once, as SQLite evaluates every occurrence again, and the whole text is parsed
    a second time only to check a fraction.
    """
    head = sa.type_coerce(sa.func.substr(text, _inline(1), _inline(19)), sa.String())
    zone = sa.func.ltrim(sa.func.substr(text, _inline(20)), _inline(".0123456789"))
    # julianday is the cheapest date function; a double day is exact to 0.1 ms here, so the
    # whole seconds round back exactly
    seconds = sa.cast(sa.func.round((sa.func.julianday(head.concat(zone)) - _inline(_UNIX_JD))
                                    * _inline(86400.0)), sa.BigInteger())
    after_seconds = sa.func.substr(text, _inline(20), _inline(1))
    fraction = sa.case(
        (after_seconds == _inline("."), sa.case(
            (sa.func.julianday(text).is_not(None), sa.cast(sa.func.round(
                sa.cast(_inline("0").concat(sa.func.substr(text, _inline(20))), sa.Double())
                * _inline(float(_NS_PER_SECOND))), sa.BigInteger())), else_=sa.null())),
        (after_seconds.op("GLOB")(_inline("[0-9]")), sa.null()),  # more than two digits
        else_=_inline(0))
    day = sa.func.substr(text, _inline(1), _inline(10))
    well_formed = sa.and_(
        text.op("GLOB")(_inline("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*")),
        sa.func.substr(text, _inline(1), _inline(4)).between(_inline("1678"), _inline("2261")),
        sa.or_(sa.func.substr(text, _inline(9), _inline(2)) <= _inline("28"),  # no 02-30
               sa.func.date(sa.func.julianday(day)) == day))
    return sa.case((well_formed, seconds * _inline(_NS_PER_SECOND) + fraction), else_=sa.null())


def _sqlite_instant(column: sa.ColumnElement) -> sa.ColumnElement:
    """A SQLite timestamp as Unix nanoseconds (NULL where undecodable), by storage class."""
    stored = sa.func.typeof(column)
    integer, real = sa.type_coerce(column, sa.BigInteger()), sa.type_coerce(column, sa.Double())
    return sa.type_coerce(sa.case(
        (stored == _inline("integer"),
         _epoch_ns(integer, lambda n, per_unit: n * _inline(per_unit))),
        (stored == _inline("real"),
         _epoch_ns(real, lambda n, per_unit: sa.cast(
             sa.func.round(n * _inline(per_unit / 1000)), sa.BigInteger()) * _inline(1000))),
        (stored == _inline("text"), _iso_text_ns(sa.type_coerce(column, sa.String()))),
        else_=sa.null()), sa.BigInteger())


class SqlLake(TelemetryReader):
    """Telemetry tables in the database at ``url`` (in ``schema``, else the default one).

    Besides the reader, it offers hooks for code that builds its own queries over the
    telemetry (:mod:`hawkeye_dagster.lake.pushdown`): :attr:`engine`, :meth:`table`, and for
    time columns :meth:`time_bounds`, :meth:`utc_hour`, :meth:`instants` and
    :meth:`refuse_undecodable`.

    Attributes
    ----------
    engine : sqlalchemy.Engine
        The database's engine.
    is_sqlite : bool
        Whether the database is SQLite (timestamps decoded value by value, no NaN).
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

    def stored_tables(self) -> set[str]:
        return set(sa.inspect(self.engine).get_table_names(schema=self._schema)) & known_tables()

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
        if kind is Kind.TIMESTAMP and self.is_sqlite:
            return TIMESTAMP  # decoded value by value, whatever the declared type
        if isinstance(sql_type, (sa.String, sa.JSON, sa.types.NullType)):
            if kind is Kind.STRING_LIST:
                return pa.list_(pa.string())  # the contract's JSON array string
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

    # -- timestamps ----------------------------------------------------------

    def _native(self, column: sa.Column, value: pd.Timestamp):
        """A UTC instant as a parameter for a native timestamp column (naive for a naive one)."""
        return (value if column.type.timezone else value.tz_convert(None)).to_pydatetime()

    def _check_native(self, column: sa.Column) -> None:
        """Refuse a time column outside SQLite that is not a native timestamp."""
        if not isinstance(column.type, sa.DateTime):
            spec = table_spec(column.table.name)
            raise ContractError(f"stored as {column.type}, the contract allows {NATIVE_TIMESTAMPS}",
                                table=spec.name, file=self._where(spec), column=column.name)

    def instant(self, column: sa.Column) -> sa.ColumnElement:
        """The time column as selected: SQLite Unix nanoseconds, else the native timestamp;
        NULL where the stored value is not a timestamp the contract allows (read with
        :meth:`instants`, refused with :meth:`refuse_undecodable`)."""
        if self.is_sqlite:
            return _sqlite_instant(column)
        self._check_native(column)
        inside = sa.and_(column >= self._native(column, EARLIEST),
                         column < self._native(column, LATEST))  # infinity is outside
        return sa.case((inside, column), else_=sa.null())

    def instants(self, values: Sequence) -> pa.Array:
        """What :meth:`instant` or :meth:`utc_hour` selected, as the contract's timestamps."""
        if self.is_sqlite:
            return pa.array(values, pa.int64()).cast(TIMESTAMP)
        return pa.array(pd.to_datetime(pd.Series(values, dtype=object), utc=True), TIMESTAMP)

    def utc_hour(self, column: sa.Column) -> sa.ColumnElement:
        """The start of the UTC hour of each timestamp, whatever the session time zone (read
        with :meth:`instants`; NULL where :meth:`instant` is)."""
        instant = self.instant(column)
        if self.is_sqlite:  # floored also before 1970, where SQLite's % is negative
            return sa.type_coerce(
                instant - (instant % _inline(_HOUR_NS) + _inline(_HOUR_NS)) % _inline(_HOUR_NS),
                sa.BigInteger())
        utc = instant if not column.type.timezone else sa.func.timezone("UTC", instant)
        return sa.func.date_trunc("hour", utc)  # a naive UTC time: no session zone applies

    def time_bounds(self, column: sa.Column, time_range: TimeRange) -> list:
        """``start <= column < end`` as WHERE conditions (none for an open side), exact.

        Native timestamps (microseconds) are compared as stored, so an index serves. SQLite's
        decoded nanoseconds are compared in one ``BETWEEN``; there a value that cannot be
        placed in time passes, so that the reader refuses it rather than dropping it.
        """
        start, end = time_range.start, time_range.end
        if start is None and end is None:
            return []
        if self.is_sqlite:
            inside = self.instant(column).between((start or EARLIEST).value,
                                                  (end or LATEST).value - 1)
            return [sa.func.coalesce(inside, column.is_not(None))]
        self._check_native(column)
        # a value in microseconds is at or after an instant exactly when it is at or after the
        # instant rounded up to the microsecond
        bounds = []
        if start is not None:
            bounds.append(column >= self._native(column, start.ceil("us")))
        if end is not None:
            bounds.append(column < self._native(column, end.ceil("us")))
        return bounds

    def refuse_undecodable(self, column: sa.Column, where: Sequence) -> None:
        """Raise a :class:`ContractError` showing a value of the time ``column``, among the rows
        ``where`` selects, that is not a timestamp the contract allows; nothing if none is."""
        shown = sa.func.quote(column) if self.is_sqlite else sa.cast(column, sa.Text())
        query = sa.select(shown).where(*where, column.is_not(None),
                                       self.instant(column).is_(None)).limit(1)
        with self.engine.connect() as conn:
            found = conn.execute(query).scalar()
        if found is None:
            return
        spec = table_spec(column.table.name)
        allowed = SQLITE_TIMESTAMPS if self.is_sqlite else f"finite {NATIVE_TIMESTAMPS}"
        raise ContractError(
            f"unreadable timestamp {found if self.is_sqlite else repr(found)}: the contract "
            f"allows {allowed}, from {EARLIEST:%Y-%m-%d} until {LATEST:%Y-%m-%d}",
            table=spec.name, file=self._where(spec), column=column.name)

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

    def read_stored(self, table: str, *, columns: Sequence[str] | None = None,
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
        where = [t.c[key] == value for key, value in (equals or {}).items()]
        where += [t.c[key].in_(list(values)) for key, values in (isin or {}).items()]
        if spec.time_column is not None and time_range is not None:
            where += self.time_bounds(t.c[spec.time_column], time_range)
        query = sa.select(*(self._select(spec, t.c[n]) for n in names)).where(*where)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return self._to_arrow(spec, t, names, rows, where)

    def _select(self, spec: TableSpec, column: sa.Column) -> sa.ColumnElement:
        """The column as selected: timestamps decoded (:meth:`instant`), JSON as its text, and
        SQLite values as stored, whatever the declared type claims."""
        kind = _kind(spec, column.name)
        if kind is Kind.TIMESTAMP:
            selected = self.instant(column)
        elif self.is_sqlite:
            selected = sa.type_coerce(column, sa.types.NullType())
        elif kind is Kind.STRING_LIST and isinstance(column.type, sa.JSON):
            selected = sa.cast(column, sa.Text())
        else:
            return column
        return selected.label(column.name)

    def _to_arrow(self, spec: TableSpec, t: sa.Table, names: list[str], rows: list,
                  where: list) -> pa.Table:
        """The fetched rows as Arrow in the contract's types; refuses undecodable timestamps
        and values of a type the column cannot hold, showing one."""
        location = self._where(spec)
        values = list(zip(*rows)) if rows else [()] * len(names)
        arrays = []
        for name, column in zip(names, values):
            kind = _kind(spec, name)
            if kind is Kind.TIMESTAMP:
                array = self.instants(column)
                if array.null_count:  # a NULL stays (validation reports it); garbage is refused
                    self.refuse_undecodable(t.c[name], where)
            elif kind is Kind.STRING_LIST:
                array = _json_lists(column, spec, location, name)
            else:
                try:
                    array = pa.array(column, from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    types = sorted({type(v).__name__ for v in column if v is not None})
                    raise ContractError(f"values of mixed types ({', '.join(types)})",
                                        table=spec.name, file=location, column=name) from None
            arrays.append(array)
        return conform(pa.table(arrays, names=names), spec, location=location)

    def read_part(self, part: TablePart, columns: Sequence[str] | None = None) -> pa.Table:
        stored = ordered_names(table_spec(part.table), part.schema.names)
        return self.read_stored(part.table, columns=stored if columns is None else
                               [c for c in columns if c in stored])

    def serving_columns(self, model_id: str) -> list[str]:
        spec = TABLES["serving_samples"]
        return self._default_columns(spec, self.table(spec), {"model_id": model_id}, None)

    # -- artifacts -----------------------------------------------------------

    def resolve_artifact(self, artifact: str) -> str:
        if not is_absolute(artifact):
            raise ContractError("artifacts in a SQL lake must be absolute paths or URLs",
                                table="snapshots", file=artifact, column="artifact")
        return artifact

    def open_artifact(self, artifact: str):
        return open_input(self.resolve_artifact(artifact))


def _json_lists(values: Sequence, spec: TableSpec, location: str, name: str) -> pa.Array:
    """JSON array strings as lists of strings (SQL NULL as null); anything else is refused."""
    lists = [None if v is None else _string_list(v) for v in values]
    bad = next((v for v, parsed in zip(values, lists) if v is not None and parsed is None), None)
    if bad is not None:
        raise ContractError(f"not a JSON array of strings: {bad!r}", table=spec.name,
                            file=location, column=name)
    return pa.array(lists, pa.list_(pa.string()))


def _string_list(text) -> list[str] | None:
    """The JSON array of strings in ``text`` (``None`` when it holds anything else)."""
    try:
        parsed = json.loads(text)
    except (ValueError, TypeError):
        return None
    return parsed if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed) \
        else None
