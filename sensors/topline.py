"""Opens an incident when a product's top-line metric degrades, and launches its triage.

Each tick reads the top line's recent history (the scanned hours plus a
reference week, filters pushed down to the lake), finds degraded series with
the seasonality-aware detector (:mod:`hawkeye_dagster.analysis.topline`;
``*_lower_is_better`` metrics degrade upwards), and opens one incident per
degraded product segment: an ``incident`` partition and a run of the
``incident_report`` with ``run_key`` = the incident id. A segment still (or
again, within :data:`SAME_INCIDENT`) degraded from an incident opened
earlier does not open another. The cursor holds the newest top-line
timestamp seen and, per open incident, when it was last seen degraded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from hawkeye_dagster.analysis.topline import detect_topline_anomalies
from hawkeye_dagster.assets.partitions import incident_partitions
from hawkeye_dagster.assets.triage import incident_report_job, write_incident
from hawkeye_dagster.incidents import Incident
from hawkeye_dagster.lake.reader import TimeRange
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource

#: the most recent stretch of the top line scanned for a new degradation
SCAN = pd.Timedelta("2D")
#: history before the scanned stretch that it is compared with
REFERENCE = pd.Timedelta("7D")
#: a segment degraded again within this of its open incident's last degraded hour continues it
SAME_INCIDENT = pd.Timedelta("1D")
#: the incident's triage window starts this long before the onset
LOOKBACK = pd.Timedelta("3D")
#: incidents opened per tick at most, most severe first
MAX_PER_TICK = 5


@dataclass
class ToplineCursor:
    """The newest top-line ``ts`` evaluated and the open incident of each segment."""

    latest: pd.Timestamp | None = None
    #: ``(product, segment)`` -> when its open incident was last seen degraded
    open: dict[tuple[str, str], pd.Timestamp] = field(default_factory=dict)

    def dump(self) -> str:
        return json.dumps({"latest": self.latest.isoformat() if self.latest else None,
                           "open": [[p, s, t.isoformat()] for (p, s), t in self.open.items()]})

    @classmethod
    def load(cls, text: str | None) -> "ToplineCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(pd.Timestamp(data["latest"]) if data["latest"] else None,
                   {(p, s): pd.Timestamp(t) for p, s, t in data["open"]})


def plan_incidents(anomalies: pd.DataFrame, cursor: ToplineCursor) -> list[Incident]:
    """New incidents for degraded segments that no open incident covers (updates ``cursor``).

    A segment's degradation continues its open incident when it starts at
    most :data:`SAME_INCIDENT` after that incident was last seen degraded.
    """
    incidents = []
    worst = anomalies.drop_duplicates(["product", "segment"])  # sorted by severity already
    for row in worst.itertuples():
        key = (row.product, row.segment)
        last = cursor.open.get(key)
        cursor.open[key] = row.end if last is None else max(last, row.end)
        if last is not None and row.onset <= last + SAME_INCIDENT:
            continue
        incidents.append(Incident(
            entry={"kind": "topline", "product": row.product, "segment": row.segment},
            start=(row.onset.floor("h") - LOOKBACK).isoformat(), end=None,
            opened_by="topline_sensor",
            detail={"metric": row.metric, "onset": row.onset.isoformat(),
                    "relative_change": float(row.relative_change), "score": float(row.score)}))
    return incidents[:MAX_PER_TICK]


@dg.sensor(
    name="topline_anomaly_sensor", job=incident_report_job, minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Opens an incident (an `incident` partition and a run of `incident_report`) when "
                "a product segment's top-line metric degrades against its like hours of the "
                "previous week.",
)
def topline_anomaly_sensor(context: dg.SensorEvaluationContext, telemetry: TelemetrySource,
                           storage: HawkeyeStorage):
    cursor = ToplineCursor.load(context.cursor)
    reader = telemetry.reader()
    ts = reader.read("topline_metrics", columns=["ts"])["ts"]
    if ts.empty:
        return dg.SkipReason("topline_metrics is empty")
    latest = ts.max()
    if cursor.latest is not None and latest <= cursor.latest:
        return dg.SkipReason(f"no top-line data after {cursor.latest.isoformat()}")
    scan = TimeRange(latest - SCAN, None)
    metrics = reader.read("topline_metrics", time_range=TimeRange(scan.start - REFERENCE, None))
    anomalies = detect_topline_anomalies(metrics, scan)
    cursor.latest = latest
    cursor.open = {k: t for k, t in cursor.open.items() if t >= latest - REFERENCE}
    incidents = plan_incidents(anomalies, cursor)
    if not incidents:
        reason = (f"{len(anomalies)} degraded series, all in open incidents" if len(anomalies)
                  else f"no top-line series degraded in the {SCAN} up to {latest.isoformat()}")
        return dg.SensorResult(skip_reason=reason, cursor=cursor.dump())
    ids = [write_incident(storage, incident) for incident in incidents]
    for incident in incidents:
        context.log.info(f"incident {incident.incident_id}: {incident.detail['metric']} of "
                         f"{incident.entry['product']}/{incident.entry['segment']} degraded "
                         f"from {incident.detail['onset']}")
    return dg.SensorResult(
        dynamic_partitions_requests=[incident_partitions.build_add_request(ids)],
        run_requests=[dg.RunRequest(run_key=i, partition_key=i) for i in ids],
        cursor=cursor.dump())


defs = dg.Definitions(sensors=[topline_anomaly_sensor])
