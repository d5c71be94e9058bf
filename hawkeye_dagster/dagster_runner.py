"""The CLI's Dagster runner: ``hawkeye-dagster triage`` and ``demo --headless`` open incidents
and print their reports.

Reports are produced by materializing the ``incident_report`` asset
in-process, with the same definitions the UI and the sensors use, over the
given lake. ``triage`` keeps its outputs in a temporary storage folder that is
removed after; the headless demo keeps them (and its runs) for the UI. This module is part
of the Dagster wiring (it builds Definitions and reads the sensors' incidents); the triage
it runs is Dagster-free (:mod:`hawkeye_dagster.triage`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
from collections.abc import Callable

import pandas as pd

from hawkeye_dagster.errors import UnknownIdError
from hawkeye_dagster.time_range import TimeRange

Progress = Callable[[str], None]


def triage_command(args: argparse.Namespace, progress: Progress) -> int:
    """Run the ``triage`` subcommand: print the report (JSON with ``--json``); exit status 0.

    Without an entry option, the summary also lists the window's other incidents with the
    command that triages each. Bad input (a folder that is no lake, an unknown id, a window
    without rows) raises :class:`~hawkeye_dagster.errors.ContractError` or
    :class:`~hawkeye_dagster.errors.UnknownIdError` for the CLI to turn into exit 2.
    """
    from hawkeye_dagster.assets.triage import materialize_incident
    from hawkeye_dagster.definitions import build_defs
    from hawkeye_dagster.incidents import Incident, make_entry
    from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
    from hawkeye_dagster.triage.entry import (check_entry, check_tables, check_window,
                                              resolve_window)
    from hawkeye_dagster.triage.summary import format_report

    telemetry = TelemetrySource(lake=args.lake, sql_url=args.sql)
    reader = telemetry.reader()
    check_tables(reader)
    try:
        entry = make_entry(product=args.product, segment=args.segment, snapshot=args.snapshot,
                           feature=args.feature)
        window = resolve_window(reader, args.start, args.end)
    except ValueError as err:
        raise UnknownIdError(f"bad options: {err}") from err
    check_entry(reader, entry)
    check_window(reader, window)
    incident = Incident(entry, start=window.start.isoformat(), end=window.end.isoformat(),
                        opened_by="cli")
    progress(f"triage of {entry['kind']} entry over {window.start} .. {window.end} "
             f"(incident {incident.incident_id})")
    with tempfile.TemporaryDirectory(prefix="hawkeye-triage-") as root:
        defs = build_defs({"telemetry": telemetry, "storage": HawkeyeStorage(root=root)})
        report = materialize_incident(defs, incident)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(format_report(report))
    if entry["kind"] == "auto":
        print(_other_incidents(args, report, find_incidents(reader, window)))
    return 0


def _other_incidents(args: argparse.Namespace, report: dict, found: list[dict]) -> str:
    """The incidents of the window that an automatic triage did not select, each with the exact
    ``triage`` command that triages it (a SQL URL's password hidden)."""
    from hawkeye_dagster.settings import redact_url
    from hawkeye_dagster.triage.entry import entry_options
    from hawkeye_dagster.triage.summary import describe_entry

    selected = entry_options(report["entry"].get("selected") or {"kind": "auto"})
    others = [f for f in found if entry_options(f["entry"]) != selected]
    if not others:
        return "\nNo other incident in the window."
    source = ["--lake", args.lake] if args.lake else ["--sql", redact_url(args.sql)]
    lines = [f"\nOther incidents in the window ({len(others)}), with the command that triages "
             "each:"]
    for other in others:
        until = ["--end", other["end"]] if other["end"] else []   # else up to the newest data
        command = ["hawkeye-dagster", "triage", *source, *entry_options(other["entry"]),
                   "--start", other["start"], *until]
        lines += [f"  - {describe_entry(other['entry'])}", f"    {shlex.join(command)}"]
    return "\n".join(lines)


def find_incidents(reader, window: TimeRange | None = None) -> list[dict]:
    """Every incident the sensors would open over a whole lake (or whose onset, alert or
    publication falls in ``window``): a degraded top-line segment (each degradation with the
    window the top-line sensor gives it, so two in a row are two incidents), a warning or
    critical feature alert, a snapshot whose served predictions were worse than its
    predecessor's. Returns :class:`~hawkeye_dagster.incidents.Incident` keyword arguments."""
    from hawkeye_dagster.analysis.model_isolation import QUALITY_COLUMNS
    from hawkeye_dagster.analysis.stable_snapshots import stable_snapshots
    from hawkeye_dagster.analysis.robust import in_range
    from hawkeye_dagster.sensors.topline import history_incidents
    from hawkeye_dagster.triage.entry import DEFAULT_SPAN
    from hawkeye_dagster.triage.topline_branch import ALERT_SEVERITIES

    lookback = pd.Timedelta("3D")
    window = window or TimeRange()
    degraded = history_incidents(reader)
    onsets = in_range(pd.DatetimeIndex([i.detail["onset"] for i in degraded]), window)
    found = [{"entry": i.entry, "start": i.start, "end": i.end, "detail": i.detail}
             for i, inside in zip(degraded, onsets) if inside]
    alerts = reader.read("feature_alerts", time_range=window)
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
    published = in_range(pd.DatetimeIndex(history["published_at"]), window)
    for row in history[history["degraded"].to_numpy() & published].itertuples():
        found.append({"entry": {"kind": "snapshot", "snapshot": row.snapshot_id},
                      "start": (row.published_at - DEFAULT_SPAN).isoformat(),
                      "end": (row.published_at + DEFAULT_SPAN).isoformat()})
    return found


def headless_demo(lake, progress: Progress) -> int:
    """``demo --headless``: open every incident of the lake, triage each through Dagster (on the
    instance of ``DAGSTER_HOME``, outputs under the project's storage), print the summaries and
    end with a table of all incidents and the paths of their reports."""
    import dagster as dg

    from hawkeye_dagster import settings
    from hawkeye_dagster.assets.triage import materialize_incident
    from hawkeye_dagster.definitions import build_defs
    from hawkeye_dagster.incidents import REPORTS_DIR, Incident
    from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
    from hawkeye_dagster.triage.summary import describe_entry, format_incidents, format_report

    telemetry = TelemetrySource(lake=str(lake))
    storage = HawkeyeStorage(root=str(settings.storage_root()))
    defs = build_defs({"telemetry": telemetry, "storage": storage})
    incidents = [Incident(**found, opened_by="demo")
                 for found in find_incidents(telemetry.reader())]
    progress(f"{len(incidents)} incidents to triage")
    triaged, printed = [], {}
    with dg.DagsterInstance.get() as instance:
        for n, incident in enumerate(incidents, 1):
            window = {"start": incident.start, "end": incident.end}
            progress(f"[{n}/{len(incidents)}] triage of "
                     f"{describe_entry({**incident.entry, 'window': window})}")
            report = materialize_incident(defs, incident, instance)
            print(f"=== incident {incident.incident_id}\n{format_report(report, printed)}\n",
                  flush=True)
            triaged.append((report, storage.path(REPORTS_DIR, f"{incident.incident_id}.json")))
    print(format_incidents(triaged), flush=True)
    return 0
