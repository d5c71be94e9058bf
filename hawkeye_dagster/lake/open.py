"""Opening a telemetry lake from what a user gives: a lake path/URL or a SQLAlchemy URL."""

from __future__ import annotations

from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.lake.sql import SqlLake


def open_lake(lake: str | None = None, sql_url: str | None = None) -> TelemetryReader:
    """The reader for a Parquet lake (path or fsspec URL) or a SQL database: give exactly one.

    A lake folder that does not exist is a
    :class:`~hawkeye_dagster.errors.ContractError`.
    """
    if (lake is None) == (sql_url is None):
        raise ValueError("give exactly one of lake= and sql_url=")
    return ParquetLake(lake) if lake is not None else SqlLake(sql_url)
