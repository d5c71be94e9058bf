"""Opens an incident for each burst of feature health alerts and launches its diagnostics.

Watches two sources of alerts in the contract's ``feature_alerts`` shape: the
lake's own table (optional) and the project's failed feature health checks,
which the features assets write as Parquet files under storage
(:data:`HEALTH_ALERTS_DIR`). Only what is new is read: Parquet files not seen
before (a modification-time watermark plus the names just at it), or for a
SQL lake the rows past a ``ts`` watermark. Alerts on features that share an
upstream node and fire close together become one incident (one ``incident``
partition, one run of the upstream analysis and the incident report, keyed
by the incident id so nothing runs twice); alerts that join an incident
opened in an earlier tick are folded into it. On its first tick the sensor
investigates only the last day of alerts (the rest is history). For the
models that consume the features, the training-partition checks of their
latest training data are launched too.
"""

import json
import time
from dataclasses import asdict, dataclass, field

import dagster as dg
import networkx as nx
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from hawkeye_dagster.analysis.lineage_graph import lineage_from_reader, related_groups
from hawkeye_dagster.analysis.training_diagnosis import partition_key
from hawkeye_dagster.assets.partitions import incident_partitions, training_partition_partitions
from hawkeye_dagster.contract import SEVERITIES, TABLES
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.incidents import INCIDENTS_DIR, Incident
from hawkeye_dagster.lake.conform import conform
from hawkeye_dagster.lake.location import filesystem_for
from hawkeye_dagster.lake.reader import TimeRange
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource

ALERTS = TABLES["feature_alerts"]
#: storage folder of the project's own failed feature health checks (Parquet, contract shape)
HEALTH_ALERTS_DIR = "feature_alerts"
#: alerts below this severity are noted, not investigated
MIN_SEVERITY = "warning"
#: alerts on related features at most this far apart are one incident
BURST = pd.Timedelta(hours=6)
#: on its first tick the sensor investigates alerts this recent (before the newest) only;
#: older ones are history
INITIAL_LOOKBACK = pd.Timedelta(days=1)
#: how far back the incident's triage window reaches from its last alert
LOOKBACK = pd.Timedelta(days=7)
#: a file may become visible up to this long after a newer one (slow writers)
GRACE_NS = 10 * 60 * 10**9
#: how long the lineage graph is reused between ticks
GRAPH_TTL_S = 600
INCIDENT_ASSETS = (dg.AssetKey("upstream_root_cause"), dg.AssetKey("incident_report"))
TRAINING_CHECKS = dg.AssetKey("training_partition_checks")
#: at most this many training partitions are checked per incident
MAX_TRAINING_PARTITIONS = 10

_graphs: dict[str, tuple[float, nx.DiGraph]] = {}


@dataclass
class AlertCursor:
    """What the sensor has read: per Parquet source the newest mtime and the names at it,
    the ``ts`` watermark of a SQL lake (with the rows read at it), and the incidents still
    open to later alerts."""

    files: dict[str, dict] = field(default_factory=dict)
    sql_ts: str | None = None
    #: digests of the SQL rows at ``sql_ts`` already read (the watermark is inclusive)
    sql_seen: list[str] = field(default_factory=list)
    open: list[dict] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> "AlertCursor":
        return cls(**json.loads(text)) if text else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def new_parquet_files(location: str, seen: dict) -> tuple[list[str], dict, pafs.FileSystem, str]:
    """The ``*.parquet`` files under ``location`` not seen yet, and the new watermark.

    ``seen`` is ``{"mtime_ns": newest mtime read, "names": files (relative to
    ``location``) within :data:`GRACE_NS` of it}``; only directory metadata is
    read, never old files.
    Returns ``(new paths, new seen, filesystem, root path)``.
    """
    fs, root = filesystem_for(location)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True,
                                                          allow_not_found=True))
             if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
             and not i.base_name.startswith((".", "_"))]
    floor = seen.get("mtime_ns", -1) - GRACE_NS
    known = set(seen.get("names", ()))
    new = [i for i in infos if i.mtime_ns >= floor and i.path[len(root):] not in known]
    newest = max([seen.get("mtime_ns", -1), *(i.mtime_ns for i in new)])
    recent = sorted({i.path[len(root):] for i in infos if i.mtime_ns >= newest - GRACE_NS})
    return sorted(i.path for i in new), {"mtime_ns": newest, "names": recent}, fs, root


def read_alert_files(paths: list[str], fs: pafs.FileSystem, root: str) -> pd.DataFrame:
    """Alert rows of these files (Hive partition folders under ``root`` become columns)."""
    if not paths:
        return pd.DataFrame(columns=list(ALERTS.column_names))
    table = ds.dataset(paths, filesystem=fs, format="parquet", partitioning="hive",
                       partition_base_dir=root).to_table()
    missing = [c for c in ALERTS.column_names if c not in table.column_names]
    if missing:
        raise ContractError("column missing from alert files", table=ALERTS.name, file=root,
                            column=missing[0])
    return conform(table.select(list(ALERTS.column_names)), ALERTS, location=root).to_pandas()


def lineage_graph_for(telemetry: TelemetrySource) -> nx.DiGraph:
    """The lake's lineage graph, rebuilt at most every :data:`GRAPH_TTL_S` seconds."""
    cached = _graphs.get(telemetry.location)
    if cached is None or time.monotonic() - cached[0] > GRAPH_TTL_S:
        cached = (time.monotonic(), lineage_from_reader(telemetry.reader()))
        _graphs[telemetry.location] = cached
    return cached[1]


@dg.sensor(
    name="feature_alert_sensor", minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Opens an incident per burst of related feature alerts (the lake's "
                "`feature_alerts` and failed feature health checks) and launches its upstream "
                "root cause, incident report and training-partition checks.",
)
def feature_alert_sensor(context: dg.SensorEvaluationContext, telemetry: TelemetrySource,
                         storage: HawkeyeStorage):
    cursor = AlertCursor.parse(context.cursor)
    alerts = [_health_alerts(storage, cursor), _lake_alerts(telemetry, cursor)]
    alerts = pd.concat([a for a in alerts if len(a)] or [alerts[0]], ignore_index=True)
    if alerts.empty:
        return dg.SensorResult(skip_reason=dg.SkipReason("no new feature alerts"),
                               cursor=cursor.dump())

    severe = alerts["severity"].map(SEVERITIES.index) >= SEVERITIES.index(MIN_SEVERITY)
    graph = lineage_graph_for(telemetry)
    known = alerts["feature_name"].isin(graph.graph["feature_nodes"].keys())
    for row in alerts[~known].itertuples():
        context.log.warning(f"alert on {row.feature_name!r}, a feature the lake does not know")
    newest = alerts["ts"].max()
    cursor.open = [o for o in cursor.open if pd.Timestamp(o["last"]) >= newest - BURST]
    recent = alerts["ts"] >= newest - INITIAL_LOOKBACK if context.cursor is None else True
    alerts = alerts[severe & known & recent].sort_values("ts", ignore_index=True)
    alerts = _fold_into_open(graph, alerts, cursor.open, context)
    if alerts.empty:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"{(~severe).sum()} info alert(s), {(~known).sum()} on unknown features, "
            "the rest history (first tick) or joined open incidents"), cursor=cursor.dump())

    present = [k for k in (*INCIDENT_ASSETS, TRAINING_CHECKS) if _has_asset(context, k)]
    incidents, requests, partitions = [], [], []
    for _, burst in alerts.groupby(related_groups(graph, alerts, BURST)):
        incident = _incident(burst)
        storage.write_json(incident.to_json(), INCIDENTS_DIR, f"{incident.incident_id}.json")
        incidents.append(incident.incident_id)
        cursor.open.append({"incident": incident.incident_id,
                            "features": sorted(burst["feature_name"].unique()),
                            "last": burst["ts"].max().isoformat()})
        selected = [k for k in INCIDENT_ASSETS if k in present]
        if selected:
            requests.append(dg.RunRequest(run_key=incident.incident_id, asset_selection=selected,
                                          partition_key=incident.incident_id,
                                          tags={"hawkeye/entry": "feature_alert"}))
        if TRAINING_CHECKS in present:
            keys = _training_partitions(telemetry, burst["feature_name"].unique())
            partitions += keys
            requests += [dg.RunRequest(run_key=f"{incident.incident_id}:{key}", partition_key=key,
                                       asset_selection=[TRAINING_CHECKS]) for key in keys]
    context.log.info(f"opened {len(incidents)} incident(s) from {len(alerts)} alert(s)")
    return dg.SensorResult(
        run_requests=requests, cursor=cursor.dump(),
        dynamic_partitions_requests=[incident_partitions.build_add_request(incidents)] + (
            [training_partition_partitions.build_add_request(sorted(set(partitions)))]
            if partitions else []))


def _health_alerts(storage: HawkeyeStorage, cursor: AlertCursor) -> pd.DataFrame:
    paths, cursor.files["health"], fs, root = new_parquet_files(
        str(storage.path(HEALTH_ALERTS_DIR)), cursor.files.get("health", {}))
    return read_alert_files(paths, fs, root)


def _lake_alerts(telemetry: TelemetrySource, cursor: AlertCursor) -> pd.DataFrame:
    if telemetry.lake:
        paths, cursor.files["lake"], fs, root = new_parquet_files(
            f"{telemetry.lake.rstrip('/')}/{ALERTS.name}", cursor.files.get("lake", {}))
        return read_alert_files(paths, fs, root)
    reader = telemetry.reader()
    if not reader.has_table(ALERTS.name):
        return pd.DataFrame(columns=list(ALERTS.column_names))
    since = TimeRange.of(cursor.sql_ts) if cursor.sql_ts else None
    rows = reader.read(ALERTS.name, time_range=since)
    digest = pd.util.hash_pandas_object(rows[list(ALERTS.column_names)], index=False).astype(str)
    rows = rows[~digest.isin(cursor.sql_seen)]
    if len(rows):
        newest = rows["ts"].max()
        at_newest = digest[rows.index][rows["ts"] == newest].tolist()
        cursor.sql_seen = (cursor.sql_seen if cursor.sql_ts == newest.isoformat() else []) + at_newest
        cursor.sql_ts = newest.isoformat()
    return rows


def _fold_into_open(graph: nx.DiGraph, alerts: pd.DataFrame, open_incidents: list[dict],
                    context: dg.SensorEvaluationContext) -> pd.DataFrame:
    """Drop alerts that belong to an incident opened in an earlier tick (related, close in time)."""
    if alerts.empty or not open_incidents:
        return alerts
    earlier = pd.DataFrame([{"feature_name": f, "ts": pd.Timestamp(o["last"]), "incident": i}
                            for i, o in enumerate(open_incidents) for f in o["features"]])
    both = pd.concat([earlier, alerts.assign(incident=-1)], ignore_index=True)
    labels = related_groups(graph, both, BURST)
    joined = pd.Series(labels[len(earlier):]).isin(set(labels[:len(earlier)])).to_numpy()
    for row in alerts[joined].itertuples():
        context.log.info(f"alert on {row.feature_name!r} at {row.ts} joins an open incident")
    return alerts[~joined].reset_index(drop=True)


def _incident(burst: pd.DataFrame) -> Incident:
    """One incident for a burst: entry on its first alert's feature, every feature's first alert."""
    first = burst.groupby("feature_name", sort=False)["ts"].min().sort_values()
    end = burst["ts"].max() + pd.Timedelta(hours=1)
    return Incident(
        entry={"kind": "feature_alert", "feature": first.index[0],
               "features": {f: t.isoformat() for f, t in first.items()}},
        start=(end - LOOKBACK).isoformat(), end=end.isoformat(), opened_by="feature_alert_sensor",
        detail={"alerts": burst.astype({"ts": str}).to_dict("records")})


def _training_partitions(telemetry: TelemetrySource, features) -> list[str]:
    """``dataset_id/partition`` keys of the latest training run of each model using the features."""
    reader = telemetry.reader()
    models = reader.read("model_features", isin={"feature_name": list(features)})["model_id"].unique()
    if not len(models):
        return []
    runs = reader.read("training_runs", isin={"model_id": list(models)})
    latest = runs.sort_values("finished_at").drop_duplicates("model_id", keep="last")
    used = latest.explode("partitions").dropna(subset=["partitions"])
    return sorted(set(partition_key(used["dataset_id"], used["partitions"])))[
        -MAX_TRAINING_PARTITIONS:]


def _has_asset(context: dg.SensorEvaluationContext, key: dg.AssetKey) -> bool:
    repository = context.repository_def
    return repository is not None and repository.asset_graph.has(key)


defs = dg.Definitions(sensors=[feature_alert_sensor])
