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

from hawkeye_dagster.errors import UnknownIdError
from hawkeye_dagster.lake.reader import TelemetryReader, TimeRange

ENTRY_KINDS = ("topline", "feature_alert", "snapshot", "auto")
#: the default window: this long up to the latest telemetry
DEFAULT_SPAN = pd.Timedelta("7D")


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


def resolve_window(reader: TelemetryReader, start=None, end=None) -> TimeRange:
    """The examined window: ``end`` defaults to just after the latest ``ts`` of
    ``topline_metrics`` and ``serving_samples``, ``start`` to :data:`DEFAULT_SPAN`
    before ``end``."""
    window = TimeRange.of(start, end)
    end = window.end
    if end is None:
        latest = [t for t in (_latest_ts(reader, name) for name in ("topline_metrics",
                                                                   "serving_samples"))
                  if t is not None]
        if not latest:
            raise UnknownIdError("tables 'topline_metrics' and 'serving_samples', column 'ts': "
                                 "no rows to take a default window from")
        end = max(latest) + pd.Timedelta("1us")
    start = window.start if window.start is not None else end - DEFAULT_SPAN
    if start >= end:
        raise ValueError(f"empty window: start {start} is not before end {end}")
    return TimeRange(start, end)


def _latest_ts(reader: TelemetryReader, table: str) -> pd.Timestamp | None:
    if not reader.has_table(table):
        return None
    latest = pc.max(reader.read_arrow(table, columns=["ts"]).column("ts")).as_py()
    return None if latest is None else pd.Timestamp(latest).tz_convert("UTC")


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
