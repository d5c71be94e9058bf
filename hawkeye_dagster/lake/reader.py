"""One interface for reading telemetry, whatever stores it.

Two implementations: :class:`hawkeye_dagster.lake.parquet.ParquetLake` (a
directory or fsspec URL of Parquet datasets, read with ``pyarrow.dataset``) and
:class:`hawkeye_dagster.lake.sql.SqlLake` (a SQLAlchemy URL). Both return
frames with the contract's column names and types, and timestamps as tz-aware
UTC, and both push filters (time range, model, columns) down to the store.
"""

from __future__ import annotations

import abc
import copy
import functools
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hawkeye_dagster.contract import TABLES, TableSpec
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.conform import contract_schema
from hawkeye_dagster.lake.lineage_union import LINEAGE_TABLES, merge_lineage
from hawkeye_dagster.time_range import TimeRange


#: tables beyond the contract that an extension declared (:func:`register_table`)
EXTENSION_TABLES: dict[str, TableSpec] = {}


def register_table(spec: TableSpec) -> TableSpec:
    """Declare a table beyond the contract, so readers read it as they read contract tables
    (types cast, filters pushed down, rows in canonical order); a lake without it reads it as
    empty only if ``spec.optional``. An extension calls this when it is imported."""
    if spec.name in TABLES:
        raise ValueError(f"table {spec.name!r} is the contract's; an extension cannot redefine it")
    known = EXTENSION_TABLES.setdefault(spec.name, spec)
    if known != spec:
        raise ValueError(f"table {spec.name!r} is already declared differently by an extension")
    return spec


def known_tables() -> set[str]:
    """The contract's tables and the extensions' declared ones."""
    return set(TABLES) | set(EXTENSION_TABLES)


def table_spec(table: str) -> TableSpec:
    """The description of ``table``, the contract's or an extension's (another name is a
    ContractError)."""
    spec = TABLES.get(table) or EXTENSION_TABLES.get(table)
    if spec is None:
        raise ContractError("not a table of the contract", table=table)
    return spec


@dataclass(frozen=True)
class TablePart:
    """One stored piece of a table: a Parquet file, or a whole SQL table.

    What validation inspects piece by piece, so that a problem names its file.
    """

    table: str
    #: the file path/URL (or SQL table) that errors name
    location: str
    #: stored column types (partition keys known from the location included); ``None`` if unreadable
    schema: pa.Schema | None
    #: partition key values known from the location (Hive ``key=value`` folders)
    partition: Mapping[str, str | None] = field(default_factory=dict)
    #: why the piece cannot be read (an empty or corrupt file), else ``None``
    problem: str | None = None


class LineageSource(Protocol):
    """Lineage from outside the lake (e.g. OpenLineage events) that joins a reader's own."""

    def tables(self, lake_node_ids: Iterable[str] = ()) -> Mapping[str, pd.DataFrame]:
        """Rows for the contract's lineage tables, given the node ids the lake already has."""


class TelemetryReader(abc.ABC):
    """Read-only access to a telemetry lake that follows the contract.

    Implementations read what is stored (:meth:`stored_tables`, :meth:`read_stored`);
    :meth:`read_arrow` adds the rows of any joined :class:`LineageSource` to the lineage
    tables, so every analysis sees one lineage graph.
    """

    #: a short human description of where the telemetry lives (path or URL without secrets)
    location: str
    #: lineage from outside the lake that its lineage tables also hold (see :meth:`with_lineage`)
    lineage_sources: tuple[LineageSource, ...] = ()

    def with_lineage(self, source: LineageSource) -> "TelemetryReader":
        """This reader (sharing its connection and caches) with ``source``'s lineage joined:
        the lake's rows win where both know a node, edge or pipeline. Validation reads stored
        parts, so it still sees the lake alone."""
        joined = copy.copy(self)
        joined.lineage_sources = (*self.lineage_sources, source)
        return joined

    @abc.abstractmethod
    def stored_tables(self) -> set[str]:
        """Names of the contract tables the store holds."""

    def tables(self) -> set[str]:
        """Names of the contract tables present (every lineage table when lineage is joined)."""
        stored = self.stored_tables()
        return stored | set(LINEAGE_TABLES) if self.lineage_sources else stored

    def has_table(self, table: str) -> bool:
        return table in self.tables()

    def missing_tables(self) -> list[str]:
        """The contract's required tables that are absent, in contract order."""
        present = self.tables()
        return [spec.name for spec in TABLES.values()
                if not spec.optional and spec.name not in present]

    def read_arrow(
        self,
        table: str,
        *,
        columns: Sequence[str] | None = None,
        time_range: TimeRange | None = None,
        equals: dict[str, object] | None = None,
        isin: dict[str, Sequence[object]] | None = None,
        ordered: bool = True,
    ) -> pa.Table:
        """Read a table as Arrow with filters pushed down.

        ``columns`` selects columns in that order (``None``: all, contract
        columns first in contract order, then the others by name; for tables
        with feature columns, the union over the partitions read),
        ``time_range`` filters the table's time column, ``equals``/``isin``
        filter columns (partition keys included, which prunes partitions).
        Types are the contract's (:mod:`hawkeye_dagster.lake.conform`):
        timestamps ``timestamp[ns, UTC]``, features float32. Rows come in the
        table's canonical order (:attr:`~hawkeye_dagster.contract.TableSpec.row_order`),
        so nothing computed from them depends on how a writer ordered its files;
        ``ordered=False`` skips the sort for callers whose result cannot depend
        on order (sums, histograms). An absent optional table reads as empty.
        Raises :class:`~hawkeye_dagster.errors.ContractError` naming the table,
        file and column when the data breaks the contract.
        """
        order = [c for c in table_spec(table).row_order if ordered]
        wanted = None if columns is None else list(columns)
        read_columns = None if wanted is None else list(dict.fromkeys(wanted + order))
        rows = self._filtered(table, read_columns, time_range, equals, isin)
        order = [c for c in order if c in rows.column_names]  # a broken table may lack some
        if order and rows.num_rows > 1:
            rows = rows.take(pc.sort_indices(rows, [(c, "ascending") for c in order]))
        return rows if wanted is None or wanted == read_columns else rows.select(wanted)

    def _filtered(self, table: str, columns: list[str] | None, time_range: TimeRange | None,
                  equals: dict[str, object] | None,
                  isin: dict[str, Sequence[object]] | None) -> pa.Table:
        """The stored rows that pass the filters, with joined lineage where there is some."""
        if not self.lineage_sources or table not in LINEAGE_TABLES:
            return self.read_stored(table, columns=columns, time_range=time_range,
                                    equals=equals, isin=isin)
        rows = self._joined_lineage(table)
        time_column = table_spec(table).time_column
        terms = [pc.field(k) == v for k, v in (equals or {}).items()]
        terms += [pc.field(k).isin(list(v)) for k, v in (isin or {}).items()]
        if time_range is not None and time_column:
            terms += [e for e in [time_range.expression(time_column)] if e is not None]
        if terms:
            rows = rows.filter(functools.reduce(operator.and_, terms))
        return rows.select(list(columns)) if columns is not None else rows

    def _joined_lineage(self, table: str) -> pa.Table:
        """A lineage table's stored rows joined with every lineage source's."""
        lake = self._stored_or_empty(table)
        nodes = lake if table == "lineage_nodes" else self._stored_or_empty("lineage_nodes")
        ids = nodes.column("node_id").to_pylist()
        frame = lake.to_pandas()
        merged = merge_lineage({table: frame},
                               *(s.tables(ids) for s in self.lineage_sources)).get(table, frame)
        return pa.Table.from_pandas(merged.reindex(columns=lake.schema.names), schema=lake.schema,
                                    preserve_index=False)

    def _stored_or_empty(self, table: str) -> pa.Table:
        """The store's rows of a table (none when it lacks the table: lineage may all be joined)."""
        if table in self.stored_tables():
            return self.read_stored(table)
        return contract_schema(table_spec(table)).empty_table()

    @abc.abstractmethod
    def read_stored(self, table: str, *, columns: Sequence[str] | None = None,
                    time_range: TimeRange | None = None, equals: dict | None = None,
                    isin: dict | None = None) -> pa.Table:
        """:meth:`read_arrow` of what the store holds (no joined lineage)."""

    @abc.abstractmethod
    def parts(self, table: str) -> list[TablePart]:
        """The stored pieces of a table, from metadata only (file footers, SQL catalog)."""

    @abc.abstractmethod
    def read_part(self, part: TablePart, columns: Sequence[str] | None = None) -> pa.Table:
        """One piece's columns (those it has), cast to the contract's types as :meth:`read_arrow`
        casts them."""

    def read(self, table: str, **filters) -> pd.DataFrame:
        """:meth:`read_arrow` as a pandas frame (tz-aware UTC timestamps)."""
        return self.read_arrow(table, **filters).to_pandas()

    @abc.abstractmethod
    def serving_columns(self, model_id: str) -> list[str]:
        """All column names of ``serving_samples`` for one model (its feature columns included)."""

    def serving_samples(
        self,
        model_id: str,
        time_range: TimeRange | None = None,
        columns: Sequence[str] | None = None,
        ordered: bool = True,
    ) -> pd.DataFrame:
        """One model's serving samples in a time range (partition-pruned by model and date),
        in canonical order unless ``ordered=False`` (see :meth:`read_arrow`)."""
        return self.read("serving_samples", columns=columns, time_range=time_range,
                         equals={"model_id": model_id}, ordered=ordered)

    def training_data(self, dataset_id: str, partitions: Sequence[str] | None = None,
                      columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Training examples of a dataset, optionally only some partitions."""
        isin = {"partition": list(partitions)} if partitions is not None else None
        return self.read("training_data", columns=columns, equals={"dataset_id": dataset_id},
                         isin=isin)

    @abc.abstractmethod
    def resolve_artifact(self, artifact: str) -> str:
        """The local path or URL of a snapshot artifact named in ``snapshots.artifact``."""

    @abc.abstractmethod
    def open_artifact(self, artifact: str):
        """A binary file object for a snapshot artifact (the caller closes it)."""
