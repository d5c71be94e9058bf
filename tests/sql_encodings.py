"""Telemetry tables written into SQLite or PostgreSQL as users' own databases hold them.

Independent of :mod:`hawkeye_dagster.lake.to_sql`: each table is created with plain DDL and
filled with plain INSERTs through the DB driver, in an :class:`Encoding` of its own (how
timestamps, integers, features and partition lists are stored), so that tests can check that
the reader and the push-down give the same answers whatever the database chose.

``write_sql(url, tables, encodings)`` takes tables as :func:`lake_factory.lake_tables` gives
them (``serving_samples`` and ``training_data`` as one table per model or dataset, unioned
here into one table with NULL where a model lacks a feature).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from hawkeye_dagster.contract import TABLES, Kind


def _unit(unit: str, tz: str | None = "UTC") -> Callable[[pa.ChunkedArray], pa.ChunkedArray]:
    """The timestamps at ``unit`` (refusing to lose precision) in zone ``tz``."""
    return lambda ts: ts.cast(pa.timestamp(unit, tz=tz))


def _text(fmt: str, zone: str = "UTC", suffix: str = "", unit: str = "s"):
    """ISO-8601 text: local time in ``zone`` at ``unit`` written with ``fmt``, then ``suffix``."""
    def encode(ts: pa.ChunkedArray) -> list:
        text = pc.strftime(_unit(unit, zone)(ts), format=fmt)
        return pc.binary_join_element_wise(text, suffix, "").to_pylist()
    return encode


def _epoch(unit: str):
    """Unix epoch integers in ``unit``."""
    return lambda ts: _unit(unit)(ts).cast(pa.int64()).to_pylist()


def _real_epoch(per_unit_us: float):
    """Unix epoch floats in the unit of ``per_unit_us`` microseconds."""
    return lambda ts: pc.divide(_unit("us")(ts).cast(pa.int64()).cast(pa.float64()),
                                per_unit_us).to_pylist()


def _native(tz: str | None):
    """Datetimes for the driver: aware in UTC, or naive UTC wall times."""
    return lambda ts: _unit("us", tz)(ts).to_pylist()


#: timestamp encodings: name -> (SQL type, encoder of an Arrow timestamp column to values)
TIMESTAMPS: dict[str, tuple[str, Callable[[pa.ChunkedArray], list]]] = {
    "timestamptz": ("TIMESTAMP WITH TIME ZONE", _native("UTC")),
    "timestamp": ("TIMESTAMP WITHOUT TIME ZONE", _native(None)),
    "iso_z": ("TEXT", _text("%Y-%m-%dT%H:%M:%S", suffix="Z")),
    "iso_offset_fraction": ("TEXT", _text("%Y-%m-%d %H:%M:%S", "+05:45", "+05:45", unit="us")),
    "iso_negative_offset": ("VARCHAR(40)", _text("%Y-%m-%dT%H:%M:%S", "-03:30", "-03:30")),
    "iso_naive": ("DATETIME", _text("%Y-%m-%d %H:%M:%S")),
    "iso_naive_fraction": ("TIMESTAMP", _text("%Y-%m-%dT%H:%M:%S", unit="ns")),
    "epoch_s": ("INTEGER", _epoch("s")),
    "epoch_ms": ("BIGINT", _epoch("ms")),
    "epoch_us": ("INTEGER", _epoch("us")),
    "epoch_ns": ("BIGINT", _epoch("ns")),
    "epoch_real_s": ("REAL", _real_epoch(1e6)),
    "epoch_real_ms": ("DOUBLE", _real_epoch(1e3)),
}
#: encodings that SQLite stores as they are given (PostgreSQL has only the native ones)
SQLITE_TIMESTAMPS = tuple(n for n in TIMESTAMPS if not n.startswith("timestamp"))


@dataclass(frozen=True)
class Encoding:
    """How one table is stored: its timestamps (a key of :data:`TIMESTAMPS`, or ``"rows"``
    for SQLite rows cycling through :data:`SQLITE_TIMESTAMPS` in an untyped column), the SQL
    types of its integer and float32 feature columns, and of ``training_runs.partitions``."""

    timestamps: str
    integers: str = "BIGINT"
    features: str = "DOUBLE PRECISION"
    lists: str = "TEXT"


def encode_timestamps(name: str, ts: pa.ChunkedArray) -> tuple[str, list]:
    """``(SQL type, values)`` of a timestamp column in encoding ``name``."""
    if name == "rows":  # every SQLite encoding in turn, in one column without a type
        encoded = np.array([encode_timestamps(n, ts)[1] for n in SQLITE_TIMESTAMPS], dtype=object)
        return "", encoded[np.arange(len(ts)) % len(encoded), np.arange(len(ts))].tolist()
    sql_type, encode = TIMESTAMPS[name]
    return sql_type, encode(ts)


def _column(spec, encoding: Encoding, name: str, values: pa.ChunkedArray) -> tuple[str, list]:
    """``(SQL type, values)`` of one column of a table in ``encoding``."""
    kind = spec.columns_by_name[name].kind if name in spec.columns_by_name else None
    if kind is Kind.TIMESTAMP:
        return encode_timestamps(encoding.timestamps, values)
    if kind is Kind.STRING_LIST:
        return encoding.lists, [None if v is None else json.dumps(v) for v in values.to_pylist()]
    if pa.types.is_integer(values.type):
        return encoding.integers, values.to_pylist()
    if pa.types.is_float32(values.type):
        return encoding.features, values.to_pylist()
    if pa.types.is_floating(values.type):
        return "DOUBLE PRECISION", values.to_pylist()
    return "TEXT", values.to_pylist()


def write_sql(url: str, tables: Mapping[str, pa.Table | Mapping[str, pa.Table]],
              encodings: Mapping[str, Encoding], *, schema: str | None = None) -> None:
    """Create and fill each of ``tables`` in the database at ``url`` (in ``schema``), stored as
    ``encodings[name]`` says, with DDL and INSERT statements written here."""
    engine = sa.create_engine(url)
    quote = engine.dialect.identifier_preparer.quote_identifier
    # a literal % in a statement is written %% where the driver's placeholders are %s
    escape = (lambda sql: sql.replace("%", "%%")) if engine.dialect.paramstyle in (
        "format", "pyformat") else (lambda sql: sql)
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    with engine.begin() as conn:
        for name, table in tables.items():
            if isinstance(table, Mapping):
                table = pa.concat_tables(table.values(), promote_options="default")
            columns = [_column(TABLES[name], encodings[name], c, table[c])
                       for c in table.column_names]
            target = (f"{quote(schema)}." if schema else "") + quote(name)
            names = [quote(c) for c in table.column_names]
            conn.exec_driver_sql(escape(f"CREATE TABLE {target} (" + ", ".join(
                f"{n} {sql_type}" for n, (sql_type, _) in zip(names, columns)) + ")"))
            rows = list(zip(*(values for _, values in columns)))
            if rows:
                conn.exec_driver_sql(escape(f"INSERT INTO {target} ({', '.join(names)}) ")
                                     + f"VALUES ({', '.join([marker] * len(names))})", rows)
    engine.dispose()
