"""``hawkeye-dagster triage`` and ``demo --headless``: open incidents and print their reports.

Reports are produced by materializing the ``incident_report`` asset
in-process, with the same definitions the UI and the sensors use, over the
given lake. ``triage`` keeps its outputs in a temporary storage folder that is
removed after; the headless demo keeps them (and its runs) for the UI.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable

import pandas as pd

from hawkeye_dagster.errors import UnknownIdError

Progress = Callable[[str], None]


def triage_command(args: argparse.Namespace, progress: Progress) -> int:
    """Run the ``triage`` subcommand: print the report (JSON with ``--json``); exit status 0.

    Bad input raises :class:`~hawkeye_dagster.errors.ContractError` or
    :class:`~hawkeye_dagster.errors.UnknownIdError` for the CLI to turn into exit 2.
    """
    from hawkeye_dagster.assets.triage import materialize_incident
    from hawkeye_dagster.definitions import build_defs
    from hawkeye_dagster.incidents import Incident, make_entry
    from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
    from hawkeye_dagster.triage.entry import check_entry, resolve_window
    from hawkeye_dagster.triage.summary import format_report

    telemetry = TelemetrySource(lake=args.lake, sql_url=args.sql)
    reader = telemetry.reader()
    try:
        entry = make_entry(product=args.product, segment=args.segment, snapshot=args.snapshot,
                           feature=args.feature)
        window = resolve_window(reader, args.start, args.end)
    except ValueError as err:
        raise UnknownIdError(f"bad options: {err}") from err
    check_entry(reader, entry)
    incident = Incident(entry, start=window.start.isoformat(), end=window.end.isoformat(),
                        opened_by="cli")
    progress(f"triage of {entry['kind']} entry over {window.start} .. {window.end} "
             f"(incident {incident.incident_id})")
    with tempfile.TemporaryDirectory(prefix="hawkeye-triage-") as root:
        defs = build_defs({"telemetry": telemetry, "storage": HawkeyeStorage(root=root)})
        report = materialize_incident(defs, incident)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0


def find_incidents(reader) -> list[dict]:
    """Every incident the sensors would open over a whole lake: a degraded top-line segment, a
    warning or critical feature alert, a snapshot whose served predictions were worse than its
    predecessor's. Returns :class:`~hawkeye_dagster.incidents.Incident` keyword arguments."""
    from hawkeye_dagster.analysis.model_isolation import QUALITY_COLUMNS
    from hawkeye_dagster.analysis.stable_snapshots import stable_snapshots
    from hawkeye_dagster.analysis.topline import detect_topline_anomalies
    from hawkeye_dagster.triage.entry import DEFAULT_SPAN
    from hawkeye_dagster.triage.tree import ALERT_SEVERITIES

    lookback = pd.Timedelta("3D")
    found = []
    anomalies = detect_topline_anomalies(reader.read("topline_metrics"))
    for row in anomalies.drop_duplicates(["product", "segment"]).itertuples():
        found.append({"entry": {"kind": "topline", "product": row.product, "segment": row.segment},
                      "start": (row.onset.floor("h") - lookback).isoformat(),
                      "end": (row.end + pd.Timedelta("1h")).isoformat()})
    alerts = reader.read("feature_alerts")
    alerts = alerts[alerts["severity"].isin(ALERT_SEVERITIES)].sort_values("ts")
    for row in alerts.drop_duplicates("feature_name").itertuples():
        found.append({"entry": {"kind": "feature_alert", "feature": row.feature_name,
                                "ts": row.ts.isoformat()},
                      "start": (row.ts - lookback).isoformat(),
                      "end": (row.ts + pd.Timedelta("1h")).isoformat()})
    models = reader.read("models").drop_duplicates("model_id")
    tasks = dict(zip(models["model_id"], models["task"]))
    samples = pd.concat([reader.serving_samples(m, columns=QUALITY_COLUMNS).assign(model_id=m)
                         for m in tasks], ignore_index=True)
    history = stable_snapshots(reader.read("snapshots"), reader.read("experiments"), samples, tasks)
    for row in history[history["degraded"]].itertuples():
        found.append({"entry": {"kind": "snapshot", "snapshot": row.snapshot_id},
                      "start": (row.published_at - DEFAULT_SPAN).isoformat(),
                      "end": (row.published_at + DEFAULT_SPAN).isoformat()})
    return found


def headless_demo(lake, progress: Progress) -> int:
    """``demo --headless``: open every incident of the lake, triage each through Dagster (on the
    instance of ``DAGSTER_HOME``, outputs under the project's storage) and print the summaries."""
    import dagster as dg

    from hawkeye_dagster import settings
    from hawkeye_dagster.assets.triage import materialize_incident
    from hawkeye_dagster.definitions import build_defs
    from hawkeye_dagster.incidents import Incident
    from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
    from hawkeye_dagster.triage.summary import format_report

    telemetry = TelemetrySource(lake=str(lake))
    defs = build_defs({"telemetry": telemetry,
                       "storage": HawkeyeStorage(root=str(settings.storage_root()))})
    incidents = [Incident(**found, opened_by="demo")
                 for found in find_incidents(telemetry.reader())]
    progress(f"{len(incidents)} incidents to triage")
    with dg.DagsterInstance.get() as instance:
        for n, incident in enumerate(incidents, 1):
            progress(f"[{n}/{len(incidents)}] {incident.entry}")
            report = materialize_incident(defs, incident, instance)
            print(f"=== incident {incident.incident_id}\n{format_report(report)}\n", flush=True)
    return 0
