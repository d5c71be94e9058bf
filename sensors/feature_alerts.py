"""Opens an incident for each burst of feature health alerts and launches its diagnostics.

Watches two sources of alerts in the contract's ``feature_alerts`` shape: the
lake's own table (optional) and the project's failed feature health checks,
which the features assets write as Parquet files under storage
(:data:`HEALTH_ALERTS_DIR`). Only what is new is read
(:mod:`hawkeye_dagster.lake.tail`: Parquet files not read before, or for a
SQL lake the rows past a ``ts`` watermark). Alerts on features that share an
upstream node and fire close together become one incident (one ``incident``
partition, one run of the upstream analysis and the incident report, keyed
by the incident id so nothing runs twice, its incident file written once);
alerts that join an incident opened in an earlier tick are folded into it.
On its first tick the sensor investigates only the alerts of the last day
before the newest one worth investigating (the rest is history; info alerts
after an incident do not hide it). For the models that consume the
features, the training-partition checks of their latest training data are
launched too. The sensor targets those assets (``asset_selection``): each
run request selects the incident's assets or one training partition's
checks, which Dagster runs as its implicit asset job.
"""

import json
import time
from dataclasses import asdict, dataclass, field

import dagster as dg
import networkx as nx
import pandas as pd

from hawkeye_dagster.analysis.alert_groups import related_groups
from hawkeye_dagster.analysis.training_diagnosis import partition_key
from hawkeye_dagster.assets.partitions import incident_partitions, training_partition_partitions
from hawkeye_dagster.contract import SEVERITIES, TABLES
from hawkeye_dagster.gather.lineage import lineage_from_reader
from hawkeye_dagster.incidents import INCIDENT_RUN_TAGS, Incident
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.lake.tail import ITEM, TailCursor, unread_rows
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.run_launcher import CRASH_RETRY_TAGS
from hawkeye_dagster.sensors import open_incident

ALERTS = TABLES["feature_alerts"]
#: storage folder of the project's own failed feature health checks (Parquet, contract shape):
#: storage is read as a lake holding this one table
HEALTH_ALERTS_DIR = ALERTS.name
#: alerts below this severity are noted, not investigated
MIN_SEVERITY = "warning"
#: alerts on related features at most this far apart are one incident
BURST = pd.Timedelta(hours=6)
#: on its first tick the sensor investigates alerts this recent (before the newest severe
#: alert on a known feature) only; older ones are history
INITIAL_LOOKBACK = pd.Timedelta(days=1)
#: how far back the incident's triage window reaches from its last alert
LOOKBACK = pd.Timedelta(days=7)
#: how long the lineage graph is reused between ticks
GRAPH_TTL_S = 600
INCIDENT_ASSETS = (dg.AssetKey("upstream_root_cause"), dg.AssetKey("incident_report"))
TRAINING_CHECKS = dg.AssetKey("training_partition_checks")
#: at most this many training partitions are checked per incident
MAX_TRAINING_PARTITIONS = 10

_graphs: dict[str, tuple[float, nx.DiGraph]] = {}


@dataclass
class AlertCursor:
    """What the sensor has read, per alert source (``health``, ``lake``) a
    :class:`~hawkeye_dagster.lake.tail.TailCursor`, and the incidents still open to later
    alerts."""

    tails: dict[str, dict] = field(default_factory=dict)
    open: list[dict] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> "AlertCursor":
        return cls(**json.loads(text)) if text else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def read_new(self, source: str, reader: TelemetryReader) -> pd.DataFrame:
        """The alerts of ``reader`` not read before, moving this source's tail past them."""
        tail = unread_rows(reader, ALERTS.name, TailCursor(**self.tails.get(source, {})),
                           list(ALERTS.column_names))
        self.tails[source] = asdict(tail.advance())
        return tail.rows.drop(columns=ITEM)


def lineage_graph_for(telemetry: TelemetrySource) -> nx.DiGraph:
    """The lake's lineage graph, rebuilt at most every :data:`GRAPH_TTL_S` seconds."""
    cached = _graphs.get(telemetry.location)
    if cached is None or time.monotonic() - cached[0] > GRAPH_TTL_S:
        cached = (time.monotonic(), lineage_from_reader(telemetry.reader()))
        _graphs[telemetry.location] = cached
    return cached[1]


@dg.sensor(
    name="feature_alert_sensor", minimum_interval_seconds=60,
    asset_selection=[*INCIDENT_ASSETS, TRAINING_CHECKS],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Opens an incident per burst of related feature alerts (the lake's "
                "`feature_alerts` and failed feature health checks) and launches its upstream "
                "root cause, incident report and training-partition checks.",
)
def feature_alert_sensor(context: dg.SensorEvaluationContext, telemetry: TelemetrySource,
                         storage: HawkeyeStorage):
    cursor = AlertCursor.parse(context.cursor)
    health = ParquetLake(str(storage.path(HEALTH_ALERTS_DIR).parent))
    alerts = [cursor.read_new("health", health), cursor.read_new("lake", telemetry.reader())]
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
    alerts = alerts[severe & known].sort_values("ts", ignore_index=True)
    if context.cursor is None and len(alerts):
        alerts = alerts[alerts["ts"] >= alerts["ts"].iloc[-1] - INITIAL_LOOKBACK]
    alerts = _fold_into_open(graph, alerts, cursor.open, context)
    if alerts.empty:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"{(~severe).sum()} info alert(s), {(~known).sum()} on unknown features, "
            "the rest history (first tick) or joined open incidents"), cursor=cursor.dump())

    incidents, requests, partitions = [], [], []
    for _, burst in alerts.groupby(related_groups(graph, alerts, BURST)):
        incident_id = open_incident(storage, _incident(burst))
        incidents.append(incident_id)
        cursor.open.append({"incident": incident_id,
                            "features": sorted(burst["feature_name"].unique()),
                            "last": burst["ts"].max().isoformat()})
        requests.append(dg.RunRequest(run_key=incident_id, asset_selection=list(INCIDENT_ASSETS),
                                      partition_key=incident_id,
                                      tags={"hawkeye/entry": "feature_alert",
                                            **CRASH_RETRY_TAGS, **INCIDENT_RUN_TAGS}))
        keys = _training_partitions(telemetry, burst["feature_name"].unique())
        partitions += keys
        requests += [dg.RunRequest(run_key=f"{incident_id}:{key}", partition_key=key,
                                   asset_selection=[TRAINING_CHECKS], tags=CRASH_RETRY_TAGS)
                     for key in keys]
    context.log.info(f"opened {len(incidents)} incident(s) from {len(alerts)} alert(s)")
    return dg.SensorResult(
        run_requests=requests, cursor=cursor.dump(),
        dynamic_partitions_requests=[incident_partitions.build_add_request(incidents)] + (
            [training_partition_partitions.build_add_request(sorted(set(partitions)))]
            if partitions else []))


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


defs = dg.Definitions(sensors=[feature_alert_sensor])
