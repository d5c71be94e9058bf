"""Watch the lake for published snapshots and diagnose each one once.

The publication sensor reads only what is new in the ``snapshots`` table
(:mod:`hawkeye_dagster.lake.tail`: Parquet files not read completely yet, or
SQL rows past a ``published_at`` watermark) and asks the instance about those
rows' ids only, so a tick costs the new rows, not the history. Each new
snapshot becomes a ``snapshot`` partition and its diagnostics run is launched
in the same tick with ``run_key`` = the snapshot id, so a snapshot is
diagnosed once however often the sensor runs. An unread snapshot counts as
launched when its run exists, not merely its partition: Dagster stores a
tick's partitions before it reserves the tick's runs, so a daemon killed in
between leaves a partition without a run, and that snapshot is launched again. At most :data:`MAX_PER_TICK`
snapshots are taken per tick, oldest first; the files holding the rest stay
unread for the next tick. A fresh instance diagnoses the lake's whole history
that way, a burst at a time: a snapshot gets its partition only in the tick
that launches its run, so no published snapshot is left undiagnosed.
Artifacts are not touched here: a missing or bad one fails the run's
``artifact_is_valid`` check.

The training-partition sensor keeps the ``training_partition`` partitions
(``dataset_id/partition``) in step with ``training_runs``.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd
from dagster._core.storage.tags import RUN_KEY_TAG

from hawkeye_dagster.analysis.training_diagnosis import partition_key
from hawkeye_dagster.assets.partitions import (
    INVALID_KEY,
    snapshot_partitions,
    training_partition_partitions,
)
from hawkeye_dagster.assets.snapshots import snapshot_diagnostics_job
from hawkeye_dagster.lake.tail import ITEM, Tail, TailCursor, unread_rows
from hawkeye_dagster.resources import TelemetrySource

#: snapshots registered and launched per tick at most
MAX_PER_TICK = 20
_COLUMNS = ["snapshot_id", "model_id", "published_at"]


def plan_tick(tail: Tail, known: set[str],
              limit: int = MAX_PER_TICK) -> tuple[list[str], list[str], TailCursor]:
    """Decide one tick from the unread rows: ``(launch, refused)`` snapshot ids and the next
    cursor.

    ``known`` are the unread ids launched before (their run exists). The
    ``limit`` oldest others are launched; items (files or SQL rows) with snapshots left for
    later ticks stay unread.
    """
    rows = tail.rows[~tail.rows["snapshot_id"].isin(known)]
    rows = rows.sort_values(["published_at", "snapshot_id"], kind="stable")
    invalid = rows["snapshot_id"].str.contains(INVALID_KEY, regex=True).astype(bool)
    refused = rows.loc[invalid, "snapshot_id"].unique().tolist()
    rows = rows[~invalid].drop_duplicates("snapshot_id")
    launch = rows.head(limit)
    left = rows.drop(index=launch.index)
    return launch["snapshot_id"].tolist(), refused, tail.advance(keep=left[ITEM])


def launched(instance: dg.DagsterInstance, snapshot_ids: set[str]) -> set[str]:
    """The snapshots among ``snapshot_ids`` whose diagnostics run exists (by run key)."""
    if not snapshot_ids:
        return set()
    records = instance.get_run_records(dg.RunsFilter(
        job_name=snapshot_diagnostics_job.name, tags={RUN_KEY_TAG: sorted(snapshot_ids)}))
    return {record.dagster_run.tags[RUN_KEY_TAG] for record in records}


@dg.sensor(
    name="snapshot_publication_sensor", job=snapshot_diagnostics_job,
    minimum_interval_seconds=15, default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a `snapshot` partition for each newly published snapshot and launches its "
                "diagnostics in the same tick (run key = snapshot id); bursts are spread over "
                f"ticks, {MAX_PER_TICK} at a time.",
)
def snapshot_publication_sensor(context: dg.SensorEvaluationContext, telemetry: TelemetrySource):
    tail = unread_rows(telemetry.reader(), "snapshots", TailCursor.load(context.cursor),
                       _COLUMNS, key=["snapshot_id"])
    known = launched(context.instance, context.instance.get_existing_dynamic_partitions(
        snapshot_partitions.name, tail.rows["snapshot_id"].unique().tolist()))
    launch, refused, cursor = plan_tick(tail, known)
    for snapshot_id in refused:
        context.log.warning(f"snapshot id {snapshot_id!r} cannot be a Dagster partition key "
                            "(holds '...' or a control character): not diagnosed")
    if not launch:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"no new snapshots ({len(tail.rows)} unread rows, {len(known)} of them known)"),
            cursor=cursor.dump())
    models = tail.rows.drop_duplicates("snapshot_id").set_index("snapshot_id")["model_id"]
    return dg.SensorResult(
        dynamic_partitions_requests=[snapshot_partitions.build_add_request(launch)],
        run_requests=[dg.RunRequest(run_key=s, partition_key=s,
                                    tags={"hawkeye/model_id": str(models[s])}) for s in launch],
        cursor=cursor.dump())


@dg.sensor(
    name="training_partition_sensor", minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a `training_partition` partition (`dataset_id/partition`) for every "
                "training data partition a run in `training_runs` read.",
)
def training_partition_sensor(context: dg.SensorEvaluationContext, telemetry: TelemetrySource):
    runs = telemetry.reader().read("training_runs", columns=["dataset_id", "partitions"])
    read = runs.explode("partitions").dropna()
    keys = set(partition_key(read["dataset_id"], read["partitions"]))
    known = context.instance.get_existing_dynamic_partitions(
        training_partition_partitions.name, sorted(keys))
    new = pd.Series(sorted(keys - known), dtype=str)
    new = new[~new.str.contains(INVALID_KEY, regex=True).astype(bool)].tolist()
    if not new:
        return dg.SkipReason(f"all {len(keys)} training partitions already have partitions")
    return dg.SensorResult(
        dynamic_partitions_requests=[training_partition_partitions.build_add_request(new)])


defs = dg.Definitions(sensors=[snapshot_publication_sensor, training_partition_sensor])
