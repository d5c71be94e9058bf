"""Watch the lake for published snapshots and diagnose each one once.

The publication sensor reads only what is new in the ``snapshots`` table:
for a Parquet lake the files it has not read completely yet (files are never
rewritten), for SQL the rows from a ``published_at`` watermark on (less a
lookback for late rows). Each new snapshot becomes a ``snapshot`` partition
and its diagnostics run is launched in the same tick with ``run_key`` = the
snapshot id, so a snapshot is diagnosed once however often the sensor runs.
At most :data:`MAX_PER_TICK` snapshots are taken per tick, oldest first; the
rest wait for the next tick. On its very first tick the sensor registers the
lake's history as partitions (to backfill from the UI) but diagnoses only the
snapshots published in the last :data:`INITIAL_LOOKBACK` before the newest.
Artifacts are not touched here: a missing or bad one fails the run's
``artifact_is_valid`` check.

The training-partition sensor keeps the ``training_partition`` partitions
(``dataset_id/partition``) in step with ``training_runs``.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from hawkeye_dagster.analysis.training_diagnosis import partition_key
from hawkeye_dagster.assets.partitions import snapshot_partitions, training_partition_partitions
from hawkeye_dagster.assets.snapshots import snapshot_diagnostics_job
from hawkeye_dagster.lake.reader import TelemetryReader, TimeRange
from hawkeye_dagster.resources import TelemetrySource

#: snapshots registered and launched per tick at most
MAX_PER_TICK = 20
#: on the first tick, snapshots published this long before the newest are diagnosed
INITIAL_LOOKBACK = pd.Timedelta("1D")
#: SQL rows may land this late after their ``published_at``
SQL_LOOKBACK = pd.Timedelta("1h")
_COLUMNS = ["snapshot_id", "model_id", "published_at"]
#: what Dagster refuses in partition keys: "..." and control characters
_INVALID_KEY = r"\.\.\.|[\x00\x07-\x0d]|^$"


@dataclass
class SnapshotCursor:
    """Progress through the ``snapshots`` table: files read completely, and a watermark."""

    seen: set[str] = field(default_factory=set)
    watermark: pd.Timestamp | None = None

    def dump(self) -> str:
        packed = zlib.compress("\n".join(sorted(self.seen)).encode())
        return json.dumps({"seen": base64.b64encode(packed).decode(),
                           "watermark": self.watermark.isoformat() if self.watermark else None})

    @classmethod
    def load(cls, text: str | None) -> "SnapshotCursor":
        if not text:
            return cls()
        data = json.loads(text)
        seen = zlib.decompress(base64.b64decode(data["seen"])).decode()
        return cls(set(filter(None, seen.split("\n"))),
                   pd.Timestamp(data["watermark"]) if data["watermark"] else None)


def unread_rows(reader: TelemetryReader, cursor: SnapshotCursor,
                sql: bool) -> tuple[pd.DataFrame, set[str]]:
    """Rows that may be new, each with the ``location`` (file) it came from, and the files read."""
    if sql:
        since = (TimeRange(cursor.watermark - SQL_LOOKBACK, None)
                 if cursor.watermark is not None else None)
        rows = reader.read("snapshots", columns=_COLUMNS, time_range=since)
        return rows.assign(location=None), set()
    parts = [p for p in reader.parts("snapshots") if p.location not in cursor.seen]
    frames = [reader.read_part(p, columns=_COLUMNS).to_pandas().assign(location=p.location)
              for p in parts]
    frames = [f for f in frames if len(f)]
    rows = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=[*_COLUMNS, "location"])
    return rows, {p.location for p in parts}


def plan_tick(rows: pd.DataFrame, read: set[str], known: set[str], cursor: SnapshotCursor, *,
              first_tick: bool, limit: int = MAX_PER_TICK) -> tuple[list[str], list[str], list[str]]:
    """Decide one tick from the unread rows: ``(register, launch, refused)`` snapshot ids.

    ``read`` are the files the rows came from. Updates ``cursor``: files with
    rows left for later ticks stay unseen, and the watermark moves to the
    newest published snapshot taken.
    """
    rows = rows[~rows["snapshot_id"].isin(known)]
    rows = rows.sort_values(["published_at", "snapshot_id"], kind="stable")
    invalid = rows["snapshot_id"].str.contains(_INVALID_KEY, regex=True).astype(bool)
    refused = rows.loc[invalid, "snapshot_id"].unique().tolist()
    rows = rows[~invalid].drop_duplicates("snapshot_id")
    history = pd.Series(False, index=rows.index)
    if first_tick and len(rows):
        history = rows["published_at"] < rows["published_at"].max() - INITIAL_LOOKBACK
    launch = rows[~history].head(limit)
    taken = pd.concat([rows[history], launch])
    left = rows.drop(index=taken.index)
    cursor.seen |= read - set(left["location"].dropna())
    if len(taken):
        newest = taken["published_at"].max()
        cursor.watermark = newest if cursor.watermark is None else max(cursor.watermark, newest)
    return taken["snapshot_id"].tolist(), launch["snapshot_id"].tolist(), refused


@dg.sensor(
    name="snapshot_publication_sensor", job=snapshot_diagnostics_job,
    minimum_interval_seconds=15, default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a `snapshot` partition for each newly published snapshot and launches its "
                "diagnostics in the same tick (run key = snapshot id); bursts are spread over "
                f"ticks, {MAX_PER_TICK} at a time.",
)
def snapshot_publication_sensor(context: dg.SensorEvaluationContext, telemetry: TelemetrySource):
    cursor = SnapshotCursor.load(context.cursor)
    rows, read = unread_rows(telemetry.reader(), cursor, sql=telemetry.sql_url is not None)
    known = set(context.instance.get_dynamic_partitions(snapshot_partitions.name))
    register, launch, refused = plan_tick(rows, read, known, cursor,
                                          first_tick=context.cursor is None)
    for snapshot_id in refused:
        context.log.warning(f"snapshot id {snapshot_id!r} cannot be a Dagster partition key "
                            "(holds '...' or a control character): not diagnosed")
    if not register:
        return dg.SensorResult(skip_reason=f"no new snapshots ({len(rows)} unread rows, "
                                           f"{len(known)} snapshots known)", cursor=cursor.dump())
    models = rows.drop_duplicates("snapshot_id").set_index("snapshot_id")["model_id"]
    return dg.SensorResult(
        dynamic_partitions_requests=[snapshot_partitions.build_add_request(register)],
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
    known = set(context.instance.get_dynamic_partitions(training_partition_partitions.name))
    new = pd.Series(sorted(keys - known), dtype=str)
    new = new[~new.str.contains(_INVALID_KEY, regex=True).astype(bool)].tolist()
    if not new:
        return dg.SkipReason(f"all {len(keys)} training partitions already have partitions")
    return dg.SensorResult(
        dynamic_partitions_requests=[training_partition_partitions.build_add_request(new)])


defs = dg.Definitions(sensors=[snapshot_publication_sensor, training_partition_sensor])
