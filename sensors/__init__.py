"""Dagster sensors: cheap, cursor-based watchers that launch diagnostics runs."""

from hawkeye_dagster.assets.triage import write_incident
from hawkeye_dagster.incidents import INCIDENTS_DIR, Incident
from hawkeye_dagster.resources import HawkeyeStorage


def open_incident(storage: HawkeyeStorage, incident: Incident) -> str:
    """Store ``incident`` unless it is stored already; returns its id (partition key).

    A tick redone after a crash, or alerts read again, open the same id: the first record
    stands, so an incident's file is written once.
    """
    if not storage.exists(INCIDENTS_DIR, f"{incident.incident_id}.json"):
        write_incident(storage, incident)
    return incident.incident_id
