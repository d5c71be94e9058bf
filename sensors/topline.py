"""Opens an incident when a product's top-line metric degrades, and launches its triage.

Each tick scans the stretches of the top line it has not scanned yet
(:data:`SCAN` long, one per :data:`STEP`, each with the reference week before
it; filters pushed down to the lake), finds degraded series with the
seasonality-aware detector (:mod:`hawkeye_dagster.analysis.topline`;
``*_lower_is_better`` metrics degrade upwards), and opens one incident per
degraded product segment: an ``incident`` partition and a run of the
``incident_report`` with ``run_key`` = the incident id. Once caught up, a
tick scans the last :data:`SCAN` up to the newest data. A fresh instance
starts at the beginning of the lake's history, so every past degradation is
opened as a live sensor would have opened it then (its triage window ends
where that stretch ended); the history is spread over ticks when long. A
segment still (or again, within :data:`SAME_INCIDENT`) degraded from an
incident opened earlier does not open another. The cursor holds the end of
the stretch scanned last and, per open incident, when it was last seen
degraded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from hawkeye_dagster.analysis.topline import detect_topline_anomalies
from hawkeye_dagster.assets.partitions import incident_partitions
from hawkeye_dagster.assets.triage import incident_report_job
from hawkeye_dagster.incidents import INCIDENT_RUN_TAGS, Incident
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.sensors import open_incident
from hawkeye_dagster.time_range import TimeRange

#: the stretch of the top line scanned at once for a new degradation
SCAN = pd.Timedelta("2D")
#: history is scanned in stretches this far apart
STEP = pd.Timedelta("1D")
#: history before the scanned stretch that it is compared with
REFERENCE = pd.Timedelta("7D")
#: the history a stretch needs before it: with the detector's own minimum (2 days) a first
#: weekend reads as a degradation, and a week would miss the incidents of the first week
MIN_HISTORY = pd.Timedelta("4D")
#: a segment degraded again within this of its open incident's last degraded hour continues it
SAME_INCIDENT = pd.Timedelta("1D")
#: the incident's triage window starts this long before the onset
LOOKBACK = pd.Timedelta("3D")
#: incidents opened per tick at most, most severe first; the rest are opened next tick
MAX_PER_TICK = 5
#: a tick stops scanning history after this long (the daemon allows a tick 60 s)
TICK_BUDGET_S = 20.0


@dataclass
class ToplineCursor:
    """The end of the top-line stretch scanned last and the open incident of each segment."""

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


def scan_ends(scanned: pd.Timestamp | None, first: pd.Timestamp,
              newest: pd.Timestamp) -> list[pd.Timestamp]:
    """Where the stretches left to scan end, oldest first: one per :data:`STEP` after the
    stretch scanned last (on a fresh start, from the first stretch with :data:`MIN_HISTORY`
    before it) and one at the newest data; none while the history is too short."""
    after = scanned if scanned is not None else first + MIN_HISTORY + SCAN - STEP
    if newest < after + STEP and scanned is None:
        return []
    ends = list(pd.date_range(after + STEP, newest, freq=STEP))
    return ends if ends and ends[-1] == newest else [*ends, newest]


def plan_incidents(anomalies: pd.DataFrame, cursor: ToplineCursor, *, end: str | None = None,
                   limit: int | None = MAX_PER_TICK) -> list[Incident]:
    """New incidents for degraded segments that no open incident covers (updates ``cursor``).

    A segment's degradation continues its open incident when it starts at
    most :data:`SAME_INCIDENT` after that incident was last seen degraded.
    Past ``limit`` new incidents (``None``: no limit), the other new ones are left out of
    ``cursor`` too, for a later scan of the same stretch to open. ``end`` is
    the incidents' triage window end (``None``: up to the newest data).
    """
    incidents = []
    worst = anomalies.drop_duplicates(["product", "segment"])  # sorted by severity already
    for row in worst.itertuples():
        key = (row.product, row.segment)
        last = cursor.open.get(key)
        if last is not None and row.onset <= last + SAME_INCIDENT:
            cursor.open[key] = max(last, row.end)
            continue
        if len(incidents) == limit:
            continue
        cursor.open[key] = row.end
        incidents.append(Incident(
            entry={"kind": "topline", "product": row.product, "segment": row.segment},
            start=(row.onset.floor("h") - LOOKBACK).isoformat(), end=end,
            opened_by="topline_sensor",
            detail={"metric": row.metric, "onset": row.onset.isoformat(),
                    "relative_change": float(row.relative_change), "score": float(row.score)}))
    return incidents


def scan_stretches(reader: TelemetryReader, cursor: ToplineCursor, ends: list[pd.Timestamp],
                   newest: pd.Timestamp, *, limit: int | None = MAX_PER_TICK,
                   budget_s: float | None = None) -> list[Incident]:
    """The new incidents of the stretches ending at ``ends`` (from :func:`scan_ends`; the one
    ending at ``newest`` is live), scanned oldest first until ``limit`` incidents or
    ``budget_s`` seconds (``None``: no bound); ``cursor`` moves past each stretch done."""
    started = time.monotonic()
    incidents: list[Incident] = []
    for end in ends:
        live = end == newest
        scan = TimeRange(end - SCAN, None if live else end)
        metrics = reader.read("topline_metrics",
                              time_range=TimeRange(scan.start - REFERENCE, scan.end))
        cursor.open = {k: t for k, t in cursor.open.items() if t >= end - REFERENCE}
        incidents += plan_incidents(detect_topline_anomalies(metrics, scan), cursor,
                                    end=None if live else end.isoformat(),
                                    limit=None if limit is None else limit - len(incidents))
        if len(incidents) == limit:
            break  # this stretch may hold more: it is scanned again next tick
        cursor.latest = end
        if budget_s is not None and time.monotonic() - started > budget_s:
            break
    return incidents


def history_incidents(reader: TelemetryReader) -> list[Incident]:
    """Every incident the sensor opens over the lake's whole top line from a fresh instance
    (the same stretches, so the same windows and ids), without its per-tick bounds: what the
    headless demo and ``triage`` show are the incidents the UI shows."""
    ts = reader.read("topline_metrics", columns=["ts"])["ts"]
    if ts.empty:
        return []
    newest = ts.max()
    return scan_stretches(reader, ToplineCursor(), scan_ends(None, ts.min(), newest), newest,
                          limit=None)


@dg.sensor(
    name="topline_anomaly_sensor", job=incident_report_job, minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Opens an incident (an `incident` partition and a run of `incident_report`) when "
                "a product segment's top-line metric degrades against its like hours of the "
                "previous week.",
)
def topline_anomaly_sensor(context: dg.SensorEvaluationContext, telemetry: TelemetrySource,
                           storage: HawkeyeStorage):
    started = time.monotonic()
    cursor = ToplineCursor.load(context.cursor)
    reader = telemetry.reader()
    ts = reader.read("topline_metrics", columns=["ts"],
                     time_range=TimeRange(cursor.latest))["ts"]
    if ts.empty or (cursor.latest is not None and ts.max() <= cursor.latest):
        return dg.SkipReason(f"no top-line data after {cursor.latest.isoformat()}"
                             if cursor.latest is not None else "topline_metrics is empty")
    newest = ts.max()
    ends = scan_ends(cursor.latest, ts.min(), newest)
    if not ends:
        return dg.SkipReason(f"{newest - ts.min()} of top-line history: scanning starts with "
                             f"{MIN_HISTORY + SCAN}")
    incidents = scan_stretches(reader, cursor, ends, newest,
                               budget_s=TICK_BUDGET_S - (time.monotonic() - started))
    if not incidents:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"no new degraded segment in the top line up to {cursor.latest.isoformat()} "
            f"({len(cursor.open)} open incident(s))"), cursor=cursor.dump())
    ids = [open_incident(storage, incident) for incident in incidents]
    for incident in incidents:
        context.log.info(f"incident {incident.incident_id}: {incident.detail['metric']} of "
                         f"{incident.entry['product']}/{incident.entry['segment']} degraded "
                         f"from {incident.detail['onset']}")
    return dg.SensorResult(
        dynamic_partitions_requests=[incident_partitions.build_add_request(ids)],
        run_requests=[dg.RunRequest(run_key=i, partition_key=i,
                                    tags={"hawkeye/entry": "topline", **INCIDENT_RUN_TAGS})
                      for i in ids],
        cursor=cursor.dump())


defs = dg.Definitions(sensors=[topline_anomaly_sensor])
