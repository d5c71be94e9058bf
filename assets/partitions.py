"""Partitions shared by the project's assets.

Days are UTC dates (the contract's ``serving_samples.date``); models,
snapshots, incidents and training partitions are dynamic because they appear
in the lake while Dagster runs. The days start at the first day the watched
lake served (read once when the definitions load, from metadata only), so the
UI shows no empty months before the data; ``HAWKEYE_START_DATE`` overrides it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pandas as pd
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


#: what Dagster refuses in partition keys: "..." and control characters
INVALID_KEY = r"\.\.\.|[\x00\x07-\x0d]|^$"


def lake_partition_keys(reader: TelemetryReader, incidents_dir: Path | None = None
                        ) -> dict[str, list[str]]:
    """The keys of every dynamic partitions definition that a lake implies, by definition name:
    its models, published snapshots and the training partitions its runs read (keys Dagster
    would refuse are left out), and the incidents stored in ``incidents_dir`` (opened by
    sensors or triage: the lake alone implies none). The sensors add the same keys tick by
    tick; a backfill registers them all at once, so no partition waits for a tick."""
    from hawkeye_dagster.analysis.training_diagnosis import partition_key

    runs = reader.read("training_runs", columns=["dataset_id", "partitions"])
    read = runs.explode("partitions").dropna()
    keys = {
        model_partitions.name: reader.read("models", columns=["model_id"])["model_id"],
        snapshot_partitions.name: reader.read("snapshots", columns=["snapshot_id"])["snapshot_id"],
        training_partition_partitions.name: partition_key(read["dataset_id"], read["partitions"]),
        incident_partitions.name: pd.Series(
            sorted(p.stem for p in incidents_dir.glob("*.json")) if incidents_dir else [],
            dtype=str),
    }
    return {name: sorted(set(found[~found.str.contains(INVALID_KEY, regex=True).astype(bool)]))
            for name, found in keys.items()}


def register_partitions(instance: dg.DagsterInstance, keys: dict[str, list[str]]
                        ) -> dict[str, list[str]]:
    """Add the ``keys`` (by dynamic partitions definition name) the instance lacks; returns the
    ones added."""
    added = {}
    for name, wanted in keys.items():
        new = sorted(set(wanted) - set(instance.get_existing_dynamic_partitions(name, wanted)))
        if new:
            instance.add_dynamic_partitions(name, new)
        added[name] = new
    return added
