"""Incidents: what a triage is asked to explain, and where its report lives.

Whoever opens an incident (the top-line, feature-alert or snapshot sensor,
the ``triage`` command, the headless demo) writes an :class:`Incident` to
storage and adds its id as an ``incident`` partition; the incident report
asset reads it back by partition key. The id is a hash of the entry and the
window, so the same incident opened twice is one partition and one run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


from hawkeye_dagster.time_range import TimeRange

EntryKind = Literal["topline", "feature_alert", "snapshot", "auto"]
INCIDENTS_DIR = "incidents"
REPORTS_DIR = "reports"
#: tags of the runs a sensor launches for an incident: the on-call engineer waits for them, so
#: the queued-run coordinator starts them before runs queued earlier at the default priority 0
#: (a fresh instance's diagnoses of the whole snapshot history, the automation's backfills)
INCIDENT_RUN_TAGS = {"dagster/priority": "1"}


@dataclass(frozen=True)
class Incident:
    """The entry point of a triage and the window it examines (UTC ISO timestamps).

    ``entry`` holds ``kind`` plus, by kind, ``product``/``segment``,
    ``feature`` or ``snapshot`` (the contract's report ``entry``).
    """

    entry: dict[str, Any]
    start: str | None = None
    end: str | None = None
    opened_by: str = "cli"
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def incident_id(self) -> str:
        key = json.dumps({"entry": self.entry, "start": self.start, "end": self.end},
                         sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return f"{self.entry.get('kind', 'auto')}-{digest}"

    @property
    def window(self) -> TimeRange:
        """``start`` and ``end`` as a UTC time range (naive times are taken as UTC)."""
        return TimeRange.of(self.start, self.end)

    def to_json(self) -> dict[str, Any]:
        return {"incident_id": self.incident_id, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Incident":
        return cls(entry=data["entry"], start=data.get("start"), end=data.get("end"),
                   opened_by=data.get("opened_by", "cli"), detail=data.get("detail", {}))


def make_entry(*, product: str | None = None, segment: str | None = None,
               snapshot: str | None = None, feature: str | None = None) -> dict[str, Any]:
    """The report's ``entry`` from the triage command's options (at most one kind)."""
    given = [k for k, v in (("topline", product), ("snapshot", snapshot), ("feature_alert", feature))
             if v is not None]
    if len(given) > 1:
        raise ValueError("give one entry point: --product/--segment, --snapshot or --feature")
    if product is not None:
        entry: dict[str, Any] = {"kind": "topline", "product": product}
        if segment is not None:
            entry["segment"] = segment
        return entry
    if snapshot is not None:
        return {"kind": "snapshot", "snapshot": snapshot}
    if feature is not None:
        return {"kind": "feature_alert", "feature": feature}
    return {"kind": "auto"}
