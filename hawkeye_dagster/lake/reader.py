"""One interface for reading telemetry, whatever stores it.

Two implementations: :class:`hawkeye_dagster.lake.parquet.ParquetLake` (a
directory or fsspec URL of Parquet datasets, read with ``pyarrow.dataset``) and
:class:`hawkeye_dagster.lake.sql.SqlLake` (a SQLAlchemy URL). Both return
frames with the contract's column names and types, and timestamps as tz-aware
UTC, and both push filters (time range, model, columns) down to the store.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa


@dataclass(frozen=True)
class TimeRange:
    """A half-open UTC interval ``[start, end)``; ``None`` means unbounded."""

    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None

    @classmethod
    def of(cls, start=None, end=None) -> "TimeRange":
        return cls(_utc(start), _utc(end))


def _utc(value) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


class TelemetryReader(abc.ABC):
    """Read-only access to a telemetry lake that follows the contract."""

    #: a short human description of where the telemetry lives (path or URL without secrets)
    location: str

    @abc.abstractmethod
    def tables(self) -> set[str]:
        """Names of the contract tables present."""

    def has_table(self, table: str) -> bool:
        return table in self.tables()

    @abc.abstractmethod
    def read_arrow(
        self,
        table: str,
        *,
        columns: Sequence[str] | None = None,
        time_range: TimeRange | None = None,
        equals: dict[str, object] | None = None,
        isin: dict[str, Sequence[object]] | None = None,
    ) -> pa.Table:
        """Read a table as Arrow with filters pushed down.

        ``columns`` selects columns (``None``: all; for tables with feature
        columns, the union over partitions), ``time_range`` filters the
        table's time column, ``equals``/``isin`` filter columns (partition keys
        included, which prunes partitions). Timestamps come back as UTC.
        Raises :class:`~hawkeye_dagster.errors.ContractError` naming the
        table, file and column when the data breaks the contract.
        """

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
    ) -> pd.DataFrame:
        """One model's serving samples in a time range (partition-pruned by model and date)."""
        return self.read(
            "serving_samples", columns=columns, time_range=time_range, equals={"model_id": model_id}
        )

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
