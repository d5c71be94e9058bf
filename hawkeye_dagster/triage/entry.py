"""Where a triage starts and over which window.

An entry is the report's ``entry`` object (contract section 5, built by
:func:`hawkeye_dagster.incidents.make_entry`): ``kind`` plus, by kind,
``product``/``segment`` (``topline``); ``feature`` (with the alert's ``ts``
if known) or a batch ``features``, a list or a mapping feature -> alert
time (``feature_alert``); ``snapshot`` (``snapshot``); nothing (``auto``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow.compute as pc

from hawkeye_dagster.errors import ContractError, UnknownIdError
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage.report import iso

ENTRY_KINDS = ("topline", "feature_alert", "snapshot", "auto")
#: the default window: this long up to the latest telemetry
DEFAULT_SPAN = pd.Timedelta("7D")
#: the tables a window is taken from, and of which it must hold rows
WINDOW_TABLES = ("topline_metrics", "serving_samples")
_WINDOW_WHERE = "tables 'topline_metrics' and 'serving_samples', column 'ts'"
#: the ``triage`` options that name an entry of each kind, by entry key
ENTRY_OPTIONS = {"topline": ("product", "segment"), "feature_alert": ("feature",),
                 "snapshot": ("snapshot",)}


def entry_features(entry: dict[str, Any]) -> list[str]:
    """The alerted features of a ``feature_alert`` entry (one ``feature`` or a batch)."""
    return list(entry.get("features") or [entry["feature"]])


def entry_onsets(entry: dict[str, Any]) -> dict[str, pd.Timestamp]:
    """The alert times a ``feature_alert`` entry carries (feature -> UTC time), maybe none."""
    features = entry.get("features")
    if isinstance(features, dict):
        return {f: TimeRange.of(t).start for f, t in features.items() if t is not None}
    if entry.get("ts") and entry.get("feature"):
        return {entry["feature"]: TimeRange.of(entry["ts"]).start}
    return {}


def entry_options(entry: dict[str, Any]) -> list[str]:
    """The ``triage`` options that name ``entry`` (none for ``auto``)."""
    return [word for key in ENTRY_OPTIONS.get(entry["kind"], ()) if entry.get(key)
            for word in (f"--{key}", entry[key])]


def check_tables(reader: TelemetryReader) -> None:
    """Refuse a folder without the contract's required tables, naming every one missing (a
    triage would otherwise stop at the first it reads, or find "no rows")."""
    missing = reader.missing_tables()
    if missing:
        raise ContractError("not a telemetry lake: required tables missing: "
                            + ", ".join(map(repr, missing)),
                            file=reader.location)


def resolve_window(reader: TelemetryReader, start=None, end=None) -> TimeRange:
    """The examined window: ``end`` defaults to just after the latest ``ts`` of
    :data:`WINDOW_TABLES`, ``start`` to :data:`DEFAULT_SPAN` before ``end``."""
    window = TimeRange.of(start, end)
    end = window.end
    if end is None:
        span = _data_span(reader)
        if span is None:
            raise UnknownIdError(f"{_WINDOW_WHERE}: no rows to take a default window from")
        end = span[1] + pd.Timedelta("1us")
    start = window.start if window.start is not None else end - DEFAULT_SPAN
    if start >= end:
        raise ValueError(f"empty window: start {start} is not before end {end}")
    return TimeRange(start, end)


def check_window(reader: TelemetryReader, window: TimeRange) -> None:
    """Refuse a window in which no table of :data:`WINDOW_TABLES` has rows: a report over it
    would say ``no_issue`` about telemetry it never saw. The message gives the lake's span."""
    if any(reader.has_table(t) and reader.read_arrow(t, columns=["ts"], time_range=window).num_rows
           for t in WINDOW_TABLES):
        return
    span = _data_span(reader)
    held = f"; the lake's rows span {iso(span[0])} .. {iso(span[1])}" if span else ""
    raise UnknownIdError(f"{_WINDOW_WHERE}: no rows in the window {iso(window.start)} .. "
                         f"{iso(window.end)} (--start/--end){held}")


def _data_span(reader: TelemetryReader) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The earliest and latest ``ts`` over :data:`WINDOW_TABLES` (``None`` without rows)."""
    spans = []
    for table in WINDOW_TABLES:
        if reader.has_table(table):
            bounds = pc.min_max(reader.read_arrow(table, columns=["ts"]).column("ts")).as_py()
            if bounds["min"] is not None:
                spans.append([pd.Timestamp(bounds[k]).tz_convert("UTC") for k in ("min", "max")])
    return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None


def check_entry(reader: TelemetryReader, entry: dict[str, Any]) -> None:
    """Refuse an entry the lake cannot answer (:class:`UnknownIdError` naming table and column)."""
    kind = entry.get("kind")
    if kind not in ENTRY_KINDS:
        raise ValueError(f"unknown entry kind {kind!r}; one of {', '.join(ENTRY_KINDS)}")
    if kind == "topline":
        if not entry.get("product"):
            raise ValueError("a topline entry needs a product")
        filters = {k: entry[k] for k in ("product", "segment") if entry.get(k)}
        if reader.read("models", columns=["model_id"], equals=filters).empty:
            what = ", ".join(f"{k} {v!r}" for k, v in filters.items())
            column = "segment" if "segment" in filters else "product"
            raise UnknownIdError(f"table 'models', column '{column}': no model serves {what}")
    elif kind == "feature_alert":
        known = set(reader.read("features", columns=["feature_name"])["feature_name"])
        missing = [f for f in entry_features(entry) if f not in known]
        if missing:
            raise UnknownIdError(f"table 'features', column 'feature_name': unknown feature "
                                 f"{missing[0]!r}")
    elif kind == "snapshot":
        found = reader.read("snapshots", columns=["snapshot_id"],
                            equals={"snapshot_id": entry.get("snapshot")})
        if found.empty:
            raise UnknownIdError(f"table 'snapshots', column 'snapshot_id': unknown snapshot "
                                 f"{entry.get('snapshot')!r}")
