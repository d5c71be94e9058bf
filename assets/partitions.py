"""Partitions shared by the project's assets.

Days are UTC dates (the contract's ``serving_samples.date``); models,
snapshots, incidents and training partitions are dynamic because they appear
in the lake while Dagster runs. The days start at the first day the watched
lake served (read once when the definitions load, from metadata only), so the
UI shows no empty months before the data; ``HAWKEYE_START_DATE`` overrides it.
"""

from __future__ import annotations

import logging

import dagster as dg
import sqlalchemy as sa

from hawkeye_dagster import settings
from hawkeye_dagster.contract import TABLES
from hawkeye_dagster.errors import HawkeyeError
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.lake.sql import SqlLake

#: the first day when neither the lake nor ``HAWKEYE_START_DATE`` gives one
DEFAULT_START_DATE = "2026-01-01"


def served_days(reader: TelemetryReader) -> tuple[str, str] | None:
    """The first and last ``serving_samples.date`` of a lake (``YYYY-MM-DD``), ``None`` if it
    served nothing: a Parquet lake's ``date=`` folders (one listing, no file opened), a
    database's ``min``/``max`` of the column."""
    if isinstance(reader, SqlLake):
        table = reader.table(TABLES["serving_samples"])
        with reader.engine.connect() as conn:
            found = conn.execute(sa.select(sa.func.min(table.c.date),
                                           sa.func.max(table.c.date))).one()
        dates = [str(d)[:10] for d in found if d is not None]
    else:
        listed = reader.listed_files("serving_samples")
        dates = sorted({part.partition["date"] for *_, part in listed if part.partition.get("date")})
    return (dates[0], dates[-1]) if dates else None


def _watched_lake_days() -> tuple[str, str] | None:
    """:func:`served_days` of the lake the definitions watch; ``None`` when it cannot be read
    (not generated yet, a database down): the definitions must load all the same."""
    source = settings.telemetry_source()
    try:
        return served_days(open_lake(lake=source.lake, sql_url=source.sql_url))
    except (HawkeyeError, sa.exc.SQLAlchemyError, OSError) as exc:
        logging.getLogger(__name__).info("daily partitions start at %s: cannot list the "
                                         "lake's days (%s)", DEFAULT_START_DATE, exc)
        return None


#: first and last day served in the watched lake when the definitions loaded
LAKE_DAYS = _watched_lake_days()

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=settings.start_date() or (LAKE_DAYS[0] if LAKE_DAYS else DEFAULT_START_DATE),
    end_offset=1,
)
model_partitions = dg.DynamicPartitionsDefinition(name="model")
model_day_partitions = dg.MultiPartitionsDefinition(
    {"date": daily_partitions, "model": model_partitions}
)
snapshot_partitions = dg.DynamicPartitionsDefinition(name="snapshot")
incident_partitions = dg.DynamicPartitionsDefinition(name="incident")
#: keys are ``dataset_id/partition`` as in the report's ``training_partitions``
training_partition_partitions = dg.DynamicPartitionsDefinition(name="training_partition")
