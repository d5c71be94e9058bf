"""Casting stored Arrow data to the contract's types.

Every reader hands its data through here, so a Parquet lake and a SQL database
give identical tables: timestamps as tz-aware UTC nanoseconds (any stored unit;
naive means UTC), ints at the contract width, feature columns float32, strings
as plain UTF-8. Casts are safe casts: a value that does not fit (an int64 that
overflows int32, a timestamp outside the nanosecond range) is a
:class:`~hawkeye_dagster.errors.ContractError` naming the column.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from hawkeye_dagster.contract import Kind, TableSpec
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.time_range import TIMESTAMP

ARROW_TYPES: dict[Kind, pa.DataType] = {
    Kind.TIMESTAMP: TIMESTAMP,
    Kind.STRING: pa.string(),
    Kind.FLOAT64: pa.float64(),
    Kind.FLOAT32: pa.float32(),
    Kind.INT32: pa.int32(),
    Kind.INT64: pa.int64(),
    Kind.STRING_LIST: pa.list_(pa.string()),
}


def _string_like(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _string_like(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)


_ACCEPTS = {
    Kind.TIMESTAMP: pa.types.is_timestamp,
    Kind.STRING: _string_like,
    Kind.FLOAT64: _numeric,
    Kind.FLOAT32: _numeric,
    Kind.INT32: pa.types.is_integer,
    Kind.INT64: pa.types.is_integer,
    Kind.STRING_LIST: lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t))
    and _string_like(t.value_type),
}


def type_problem(spec: TableSpec, name: str, stored: pa.DataType) -> str | None:
    """Why a stored column of type ``stored`` cannot hold column ``name`` of ``spec``.

    ``None`` when it can (after a cast). An all-null column fits anything; a
    partition key repeated inside a file may be any type that reads as text.
    Columns outside the contract are extra columns and always fit.
    """
    column = spec.columns_by_name.get(name)
    if pa.types.is_null(stored) or column is None:
        return None
    kind = column.kind
    if _ACCEPTS[kind](stored):
        return None
    if name in spec.partition_keys and (pa.types.is_integer(stored) or pa.types.is_date(stored)):
        return None
    return f"stored as {stored}, the contract has {kind.value}"


def target_type(spec: TableSpec, name: str, stored: pa.DataType) -> pa.DataType:
    """The type a stored column is read as: the contract's, float32 for features, else its own."""
    column = spec.columns_by_name.get(name)
    if column is not None:
        return ARROW_TYPES[column.kind]
    if spec.feature_columns and _numeric(stored):
        return pa.float32()
    return stored.value_type if pa.types.is_dictionary(stored) else stored


def contract_schema(spec: TableSpec, features: Iterable[str] = ()) -> pa.Schema:
    """The read schema of a table with nothing stored: its contract columns, plus (for feature
    tables) the float32 feature columns named in ``features``."""
    extra = [f for f in features if spec.feature_columns and f not in spec.column_names]
    return pa.schema([(c.name, ARROW_TYPES[c.kind]) for c in spec.columns]
                     + [(f, pa.float32()) for f in dict.fromkeys(extra)])


def ordered_names(spec: TableSpec, names: Iterable[str]) -> list[str]:
    """The canonical column order: contract columns in contract order, then the rest by name."""
    names = set(names)
    return [c for c in spec.column_names if c in names] + sorted(names - set(spec.column_names))


def unified_schema(spec: TableSpec, parts: Iterable[tuple[str, pa.Schema]]) -> pa.Schema:
    """One read schema for several stored pieces (files) of a table, in canonical order.

    Unlike reading with one file's schema, every column of every piece is kept
    (per-model feature columns differ). ``parts`` pairs each piece's location
    with its stored schema; a contract column stored with a type that cannot
    hold it raises :class:`ContractError` naming that location and column.
    """
    stored: dict[str, list[pa.DataType]] = {}
    for location, schema in parts:
        for field in schema:
            problem = type_problem(spec, field.name, field.type)
            if problem:
                raise ContractError(problem, table=spec.name, file=location, column=field.name)
            stored.setdefault(field.name, []).append(field.type)
    fields = []
    for name in ordered_names(spec, stored):
        types = {target_type(spec, name, t) for t in stored[name]}
        if len(types) > 1:
            try:
                types = {pa.unify_schemas([pa.schema([(name, t)]) for t in types],
                                          promote_options="permissive").field(name).type}
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ContractError(f"stored with conflicting types: {exc}", table=spec.name,
                                    column=name) from exc
        fields.append(pa.field(name, types.pop()))
    return pa.schema(fields)


def conform(table: pa.Table, spec: TableSpec, *, location: str) -> pa.Table:
    """``table`` with every column cast to the type it is read as (see :func:`target_type`)."""
    columns = []
    for name, column in zip(table.column_names, table.columns):
        problem = type_problem(spec, name, column.type)
        if problem:
            raise ContractError(problem, table=spec.name, file=location, column=name)
        target = target_type(spec, name, column.type)
        try:
            columns.append(column.cast(target) if column.type != target else column)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ContractError(_misfit(column, target), table=spec.name, file=location,
                                column=name) from exc
    return pa.table(columns, names=table.column_names)


def _misfit(column: pa.ChunkedArray, target: pa.DataType) -> str:
    """Why a stored column does not cast to ``target``, in the contract's words."""
    stored = column.type
    if pa.types.is_integer(stored) and pa.types.is_integer(target):
        info = np.iinfo(target.to_pandas_dtype())
        values = column.drop_null().to_numpy(zero_copy_only=False)
        outside = values[(values < info.min) | (values > info.max)]
        example = f", e.g. {outside[0]}" if len(outside) else ""
        return (f"stored as {stored} with values outside {target}'s range "
                f"[{info.min}, {info.max}]{example}")
    if pa.types.is_timestamp(stored):
        return (f"stored as {stored} with instants outside what {target} holds "
                "(1677-09-21 to 2262-04-11)")
    return f"stored as {stored}, whose values do not convert to the contract's {target}"
