"""The one Dagster ``Definitions`` of hawkeye-dagster, loaded by ``workspace.yaml``.

Each domain module (telemetry, features, lineage, snapshots, training, triage,
mitigation) exposes its own ``defs``; here they are merged and bound to
resources. ``defs`` uses the source that ``HAWKEYE_LAKE`` / ``HAWKEYE_SQL_URL``
select; the CLI calls :func:`build_defs` with the lake it was given, so the
command line and the UI run the very same assets. Automation is on from the
start: :data:`AUTOMATION_SENSOR` runs by default over every asset that carries
an automation condition (Dagster's implicit default sensor starts stopped).
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
AUTOMATION_SENSOR = "automation_condition_sensor"


def build_defs(resources: Mapping[str, dg.ConfigurableResource] | None = None) -> dg.Definitions:
    """All domains merged, with the automation sensor; ``resources`` override those bound from
    the environment."""
    merged = dg.Definitions.merge(
        *(domain.defs for domain in DOMAINS),
        dg.Definitions(resources={**default_resources(), **(resources or {})}),
    )
    automated = [spec.key for spec in merged.resolve_all_asset_specs()
                 if spec.automation_condition is not None]
    sensor = dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR, target=automated, default_status=dg.DefaultSensorStatus.RUNNING,
        description="Materializes the assets whose automation conditions hold: the feature "
                    "reference, statistics, drift and ranking over the lake's days, the lineage "
                    "graph and the stable snapshots (see hawkeye_dagster.assets.automation).")
    return dg.Definitions.merge(merged, dg.Definitions(sensors=[sensor]))


defs = build_defs()
