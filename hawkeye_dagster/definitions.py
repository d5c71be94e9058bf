"""The one Dagster ``Definitions`` of hawkeye-dagster, loaded by ``workspace.yaml``.

Each domain module (telemetry, features, lineage, snapshots, training, triage,
mitigation) exposes its own ``defs``; here they are merged and bound to
resources. ``defs`` uses the source that ``HAWKEYE_LAKE`` / ``HAWKEYE_SQL_URL``
select; the CLI calls :func:`build_defs` with the lake it was given, so the
command line and the UI run the very same assets.
"""

from collections.abc import Mapping

import dagster as dg

from hawkeye_dagster.assets import (
    features,
    lineage,
    mitigation,
    snapshots,
    telemetry,
    training,
    triage,
)
from hawkeye_dagster.resources import default_resources
from hawkeye_dagster.sensors import feature_alerts, models, topline
from hawkeye_dagster.sensors import snapshots as snapshot_sensors

DOMAINS = [telemetry, models, features, lineage, feature_alerts, mitigation, snapshots, training,
           snapshot_sensors, triage, topline]


def build_defs(resources: Mapping[str, dg.ConfigurableResource] | None = None) -> dg.Definitions:
    """All domains merged; ``resources`` override those bound from the environment."""
    return dg.Definitions.merge(
        *(domain.defs for domain in DOMAINS),
        dg.Definitions(resources={**default_resources(), **(resources or {})}),
    )


defs = build_defs()
