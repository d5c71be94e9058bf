"""A telemetry lake of Parquet datasets: one folder per table, Hive partition folders.

Reads go through ``pyarrow.dataset`` with everything pushed down: partition
folders are pruned while listing (``model_id=`` to one model, ``date=`` to the
days a time range touches, any ``equals``/``isin`` on a partition key), row
groups by their statistics, columns by projection. The read schema is the
union over the files actually read, so per-model feature columns are all kept.

Each file's footer is read once (files are never rewritten in place, so it is
cached by path, size and mtime); its time-column statistics become a guarantee
that lets a file wholly inside the time range skip the row filter.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hawkeye_dagster.contract import TABLES, TableSpec
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.conform import (
    conform,
    contract_schema,
    unified_schema,
)
from hawkeye_dagster.lake.location import filesystem_for, is_absolute, is_url, open_input
from hawkeye_dagster.lake.reader import TablePart, TelemetryReader, known_tables, table_spec
from hawkeye_dagster.time_range import TimeRange

#: the partition key holding the UTC date of the time column (``serving_samples``)
DATE_KEY = "date"
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_FORMAT = ds.ParquetFileFormat()
_NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_INT64 = (-(2**63), 2**63 - 1)

Partition = dict[str, str | None]


@dataclass(frozen=True)
class _Footer:
    schema: pa.Schema
    #: (min, max) of the time column over the file in ns since the epoch, when statistics give it
    time_bounds: tuple[int, int] | None


class ParquetLake(TelemetryReader):
    """A lake folder (local path or fsspec URL) of Parquet datasets, one per contract table."""

    def __init__(self, root: str):
        self._fs, self._root = filesystem_for(root)
        #: what errors name: the URL as given, or the absolute local path
        self.location = root.rstrip("/") if is_url(root) else self._root
        if self._fs.get_file_info(self._root).type != pafs.FileType.Directory:
            raise ContractError("lake folder not found", file=root)
        self._footers: dict[tuple[str, int | None, int | None], _Footer] = {}

    # -- listing -------------------------------------------------------------

    def stored_tables(self) -> set[str]:
        infos = self._fs.get_file_info(pafs.FileSelector(self._root))
        known = known_tables()
        return {i.base_name for i in infos
                if i.type == pafs.FileType.Directory and i.base_name in known}

    def _display(self, path: str) -> str:
        return self.location + path[len(self._root):]

    def _files(self, spec: TableSpec, equals: dict | None = None, isin: dict | None = None,
               time_range: TimeRange | None = None) -> list[tuple[pafs.FileInfo, Partition]]:
        """The table's ``*.parquet`` files under the partition folders the filters keep."""
        wanted: dict[str, set[str]] = {}
        for key, values in [*((k, [v]) for k, v in (equals or {}).items()),
                            *(isin or {}).items()]:
            values = {str(v) for v in values}
            wanted[key] = wanted[key] & values if key in wanted else values
        by_date = time_range if DATE_KEY in spec.partition_keys else None

        def keep(key: str, value: str | None) -> bool:
            if key in wanted and value not in wanted[key]:
                return False
            return not (key == DATE_KEY and by_date and value and not _day_overlaps(value, by_date))

        found = []
        pending = [(f"{self._root}/{spec.name}", {})]
        while pending:
            folder, partition = pending.pop()
            for info in self._fs.get_file_info(pafs.FileSelector(folder)):
                name = info.base_name
                if name.startswith((".", "_")):
                    continue
                if info.type == pafs.FileType.Directory:
                    key, is_key, raw = name.partition("=")
                    if not is_key:
                        pending.append((info.path, partition))
                        continue
                    value = _hive_value(raw)
                    if keep(key, value):
                        pending.append((info.path, {**partition, key: value}))
                elif info.type == pafs.FileType.File and name.endswith(".parquet"):
                    found.append((info, partition))
        return sorted(found, key=lambda item: item[0].path)

    def listed_files(self, table: str) -> list[tuple[str, int, TablePart]]:
        """The table's ``*.parquet`` files by one recursive listing (no footer read), sorted by
        name: each file's path inside the table folder, its modification time in ns, and its
        part for :meth:`read_part` (schema ``None``). An absent table folder lists nothing.

        Hidden (``.``/``_``) files and folders are skipped, and Hive ``key=value`` folders give
        each part its partition values, as :meth:`read_arrow` lists them.
        """
        folder = f"{self._root}/{table}"
        infos = self._fs.get_file_info(pafs.FileSelector(folder, recursive=True,
                                                         allow_not_found=True))
        found = []
        for info in infos:
            name = info.path[len(folder) + 1:]
            steps = name.split("/")
            if (info.type != pafs.FileType.File or not name.endswith(".parquet")
                    or any(s.startswith((".", "_")) for s in steps)):
                continue
            hive = (s.partition("=") for s in steps[:-1])
            partition = {k: _hive_value(v) for k, is_key, v in hive if is_key}
            part = TablePart(table, self._display(info.path), None, partition)
            found.append((name, info.mtime_ns, part))
        return sorted(found, key=lambda item: item[0])

    def _table_files(self, spec: TableSpec, **filters) -> list[tuple[pafs.FileInfo, Partition]]:
        if self._fs.get_file_info(f"{self._root}/{spec.name}").type != pafs.FileType.Directory:
            if spec.optional:
                return []
            raise ContractError("table missing from the lake", table=spec.name,
                                file=f"{self.location}/{spec.name}")
        return self._files(spec, **filters)

    def _footer(self, spec: TableSpec, info: pafs.FileInfo) -> _Footer:
        key = (info.path, info.size, info.mtime_ns)
        if key not in self._footers:
            self._footers[key] = self._read_footer(spec, info)
        return self._footers[key]

    def _read_footer(self, spec: TableSpec, info: pafs.FileInfo) -> _Footer:
        where = {"table": spec.name, "file": self._display(info.path)}
        if info.size == 0:
            raise ContractError("empty file (0 bytes), not Parquet", **where)
        try:
            meta = pq.read_metadata(info.path, filesystem=self._fs)
        except (pa.ArrowException, OSError) as exc:
            raise ContractError(f"not a readable Parquet file: {exc}", **where) from exc
        schema = meta.schema.to_arrow_schema().remove_metadata()
        return _Footer(schema, _time_bounds(meta, schema, spec.time_column))

    @staticmethod
    def _with_partition(schema: pa.Schema, partition: Partition) -> pa.Schema:
        for key in partition:
            if key not in schema.names:
                schema = schema.append(pa.field(key, pa.string()))
        return schema

    # -- reading -------------------------------------------------------------

    def read_stored(self, table: str, *, columns: Sequence[str] | None = None,
                   time_range: TimeRange | None = None, equals: dict | None = None,
                   isin: dict | None = None) -> pa.Table:
        spec = table_spec(table)
        files = self._table_files(spec, equals=equals, isin=isin, time_range=time_range)
        schema = self._read_schema(spec, files, columns)
        filtered = [*(equals or {}), *(isin or {})]
        names = list(columns) if columns is not None else schema.names
        stored = set(schema.names)
        missing = [c for c in [*names, *filtered] if c not in stored]
        if missing:
            raise ContractError("no such column in the files read", table=spec.name,
                                file=f"{self.location}/{spec.name}", column=missing[0])
        return self._scan(spec, files, schema, names, _Filters(time_range, equals, isin))

    def _read_schema(self, spec: TableSpec, files: list[tuple[pafs.FileInfo, Partition]],
                     columns: Sequence[str] | None = None) -> pa.Schema:
        """The union of the files' schemas (with no files, :func:`contract_schema`)."""
        if not files:
            return contract_schema(spec, columns or ())
        return unified_schema(spec, [
            (self._display(info.path), self._with_partition(self._footer(spec, info).schema, p))
            for info, p in files])

    def _scan(self, spec: TableSpec, files: list[tuple[pafs.FileInfo, Partition]],
              schema: pa.Schema, names: list[str], filters: _Filters) -> pa.Table:
        """The rows of ``files`` that pass ``filters``, as ``schema`` (the read schema).

        Files are scanned in groups of one stored encoding (the types of the columns read and
        filtered), each with filters whose scalars are cast to that group's types, so a
        naive ``timestamp[us]`` file and a ``timestamp[ns, tz=Asia/Kolkata]`` one are both
        filtered natively; each group is then cast to the read schema.
        """
        if not files:
            return schema.empty_table().select(names)
        wanted = set(names) | filters.columns(spec)
        groups: dict[tuple, list[tuple[pafs.FileInfo, Partition]]] = {}
        for info, partition in files:
            stored = self._with_partition(self._footer(spec, info).schema, partition)
            key = tuple((f.name, f.type) for f in stored if f.name in wanted)
            groups.setdefault(key, []).append((info, partition))
        target = pa.schema([schema.field(n) for n in names])
        tables = []
        for key, members in groups.items():
            stored = pa.schema([*key, *(schema.field(n) for n in wanted
                                        if n not in dict(key))])
            guarantees = [_guarantee(spec, partition, self._footer(spec, info), stored)
                          for info, partition in members]
            dataset = ds.FileSystemDataset.from_paths(
                [info.path for info, _ in members], schema=stored, format=_FORMAT,
                filesystem=self._fs, partitions=guarantees)
            try:
                data = _filtered_scan(dataset, spec, stored, names, filters)
            except (pa.ArrowException, OSError) as exc:
                raise self._locate(spec, members, names, exc) from exc
            tables.append(_cast_to(conform(data, spec, location=self._display(
                members[0][0].path)), target))
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _locate(self, spec: TableSpec, files, names: list[str], exc: Exception) -> ContractError:
        """The file (and column) behind a failed scan: unreadable data, or a value that does
        not fit its type."""
        for info, _ in files:
            location = self._display(info.path)
            stored = set(self._footer(spec, info).schema.names)
            try:
                data = pq.read_table(info.path, columns=[n for n in names if n in stored],
                                     filesystem=self._fs)
            except (pa.ArrowException, OSError) as err:
                return ContractError(f"not a readable Parquet file: {err}", table=spec.name,
                                     file=location)
            try:
                conform(data, spec, location=location)
            except ContractError as located:
                return located
        return ContractError(f"cannot read: {exc}", table=spec.name,
                             file=f"{self.location}/{spec.name}")

    def parts(self, table: str) -> list[TablePart]:
        spec = table_spec(table)
        found = []
        for info, partition in self._table_files(spec):
            location = self._display(info.path)
            try:
                schema = self._with_partition(self._footer(spec, info).schema, partition)
            except ContractError as exc:
                found.append(TablePart(table, location, None, partition, exc.reason))
            else:
                found.append(TablePart(table, location, schema, partition))
        return found

    def read_part(self, part: TablePart, columns: Sequence[str] | None = None) -> pa.Table:
        spec = table_spec(part.table)
        path = self._root + part.location[len(self.location):]
        files = [(self._fs.get_file_info(path), dict(part.partition))]
        schema = self._read_schema(spec, files)
        names = [c for c in columns if c in schema.names] if columns is not None else schema.names
        return self._scan(spec, files, schema, names, _Filters())

    def serving_columns(self, model_id: str) -> list[str]:
        spec = TABLES["serving_samples"]
        return self._read_schema(spec, self._table_files(spec, equals={"model_id": model_id})).names

    # -- artifacts -----------------------------------------------------------

    def resolve_artifact(self, artifact: str) -> str:
        if is_absolute(artifact):
            return artifact
        if ".." in PurePosixPath(artifact).parts:
            raise ContractError("artifact path leaves the lake folder", table="snapshots",
                                file=artifact, column="artifact")
        return f"{self.location}/{artifact}"

    def open_artifact(self, artifact: str):
        return open_input(self.resolve_artifact(artifact))


def _hive_value(raw: str) -> str | None:
    """A partition value from its Hive folder name (``key=<raw>``)."""
    return None if raw == HIVE_NULL else unquote(raw)


def _day_overlaps(day: str, time_range: TimeRange) -> bool:
    """Whether the UTC day ``day`` (``YYYY-MM-DD``) meets ``time_range`` (unparsable: keep)."""
    try:
        start = pd.Timestamp(day, tz="UTC")
    except ValueError:
        return True
    return ((time_range.end is None or start < time_range.end)
            and (time_range.start is None or start + pd.Timedelta(days=1) > time_range.start))


def _time_bounds(meta: pq.FileMetaData, schema: pa.Schema, column: str | None):
    """(min, max) of a timestamp column in ns, if every row group has statistics of it."""
    if column is None or column not in schema.names or meta.num_row_groups == 0:
        return None
    kind = schema.field(column).type
    if not pa.types.is_timestamp(kind):
        return None
    leaf = next(j for j in range(meta.num_columns) if meta.schema.column(j).path == column)
    lows, highs = [], []
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(leaf).statistics
        if (stats is None or not stats.has_min_max or not stats.has_null_count
                or stats.null_count or stats.physical_type != "INT64"):
            return None
        lows.append(stats.min_raw)
        highs.append(stats.max_raw)
    low, high = min(lows) * _NS_PER_UNIT[kind.unit], max(highs) * _NS_PER_UNIT[kind.unit]
    return (low, high) if _INT64[0] <= low and high <= _INT64[1] else None


def _guarantee(spec: TableSpec, partition: Partition, footer: _Footer,
               stored: pa.Schema) -> pc.Expression:
    """What holds for every row of a file: its partition values and its time bounds, as
    expressions over the file's stored types (``stored``: its group's scan schema).

    A partition value that does not cast to a key stored inside the file is left out: the
    guarantee only lets the scan skip work, and the file's own column is read instead.
    """
    terms = []
    for key, value in partition.items():
        if key not in stored.names:  # neither read nor filtered
            continue
        if value is None:
            terms.append(pc.field(key).is_null())
            continue
        scalar = _typed_scalar(value, stored.field(key).type)
        if scalar is not None:
            terms.append(pc.field(key) == scalar)
    time = spec.time_column
    if (footer.time_bounds is not None and time in stored.names
            and pa.types.is_timestamp(stored.field(time).type)):
        kind = stored.field(time).type
        low, high = (_instant(bound, kind) for bound in footer.time_bounds)
        terms += [pc.field(time) >= low, pc.field(time) <= high]
    return _all(terms) if terms else pc.scalar(True)


def _filtered_scan(dataset: ds.Dataset, spec: TableSpec, stored: pa.Schema, names: list[str],
                   filters: _Filters) -> pa.Table:
    """``names`` of the dataset's rows that pass ``filters``.

    Filters run inside the scan, except where a view-typed column (``string_view``,
    ``binary_view``) is read or filtered: Arrow's compute kernels can neither compare nor
    filter those (``array_filter`` has no view kernel), and the Parquet reader follows the
    Arrow schema a file stores, so such a group is read, its views cast to plain strings,
    and filtered in memory.
    """
    views = {f.name for f in stored
             if pa.types.is_string_view(f.type) or pa.types.is_binary_view(f.type)}
    read = list(dict.fromkeys([*names, *filters.columns(spec)]))
    if not views & set(read):
        return dataset.to_table(columns=names, filter=filters.expression(spec, stored))
    plain = pa.schema([f.with_type(_plain(f.type)) if f.name in views else f for f in stored])
    data = dataset.to_table(columns=read).cast(pa.schema([plain.field(n) for n in read]))
    expression = filters.expression(spec, plain)
    return (data if expression is None else data.filter(expression)).select(names)


def _plain(kind: pa.DataType) -> pa.DataType:
    """The non-view type of a view type: ``string`` for ``string_view``, ``binary`` else."""
    return pa.string() if pa.types.is_string_view(kind) else pa.binary()


@dataclass(frozen=True)
class _Filters:
    """A read's row filters, built per group of files against the types stored there."""

    time_range: TimeRange | None = None
    equals: dict | None = None
    isin: dict | None = None

    def columns(self, spec: TableSpec) -> set[str]:
        """The columns the filters read."""
        timed = self.time_range is not None and spec.time_column is not None
        return {*(self.equals or {}), *(self.isin or {}), *([spec.time_column] if timed else [])}

    def expression(self, spec: TableSpec, stored: pa.Schema) -> pc.Expression | None:
        """The filter over columns stored as ``stored``: every scalar is cast to its column's
        stored type (never the column to the scalar's), so any unit, zone or string encoding
        is compared natively."""
        terms = []
        for key, value in (self.equals or {}).items():
            terms.append(pc.field(key) == self._scalar(spec, key, value, stored))
        for key, values in (self.isin or {}).items():
            kind = _value_type(stored.field(key).type)
            try:
                terms.append(pc.field(key).isin(pa.array(list(values)).cast(kind)))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise ContractError(f"filter values do not fit the column's {kind}: {exc}",
                                    table=spec.name, column=key) from exc
        if self.time_range is not None and spec.time_column is not None:
            column = spec.time_column
            kind = stored.field(column).type
            # for whole values x in the column's unit: x >= s <=> x >= ceil(s), x < e <=> x < ceil(e)
            for bound, compare in ((self.time_range.start, operator.ge),
                                   (self.time_range.end, operator.lt)):
                if bound is not None:
                    terms.append(compare(pc.field(column),
                                         _instant(bound.as_unit("ns").value, kind, ceil=True)))
        return _all(terms) if terms else None

    @staticmethod
    def _scalar(spec: TableSpec, key: str, value, stored: pa.Schema) -> pa.Scalar:
        scalar = _typed_scalar(value, stored.field(key).type)
        if scalar is None:
            raise ContractError(f"filter value {value!r} does not fit the column's "
                                f"{stored.field(key).type}", table=spec.name, column=key)
        return scalar


def _value_type(kind: pa.DataType) -> pa.DataType:
    """The type of a column's values (a dictionary column compares by its values)."""
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _typed_scalar(value, kind: pa.DataType) -> pa.Scalar | None:
    """``value`` as a scalar of a column's value type (``None`` when it does not fit)."""
    try:
        return pa.scalar(value).cast(_value_type(kind))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def _instant(ns: int, kind: pa.DataType, *, ceil: bool = False) -> pa.Scalar:
    """The instant ``ns`` (nanoseconds since the epoch, UTC) as a scalar of the timestamp type
    ``kind``: in its unit (rounded down, or up with ``ceil``), in its zone (naive: UTC)."""
    per = _NS_PER_UNIT[kind.unit]
    return pa.scalar(-(-ns // per) if ceil else ns // per, kind)


def _cast_to(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` as ``schema``: columns cast to its types (those missing filled with nulls)."""
    columns = [table[f.name].cast(f.type) if f.name in table.column_names
               else pa.nulls(len(table), f.type) for f in schema]
    return pa.table(columns, schema=schema)


def _all(terms: list[pc.Expression]) -> pc.Expression:
    return functools.reduce(operator.and_, terms)
