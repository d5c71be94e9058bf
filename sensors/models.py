"""Keeps the ``model`` dynamic partitions in step with the lake's ``models`` table."""

import dagster as dg

from hawkeye_dagster.assets.partitions import model_partitions
from hawkeye_dagster.resources import TelemetrySource


@dg.sensor(
    name="model_registry_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a `model` partition for every model that appears in the lake's `models` table.",
)
def model_registry_sensor(context: dg.SensorEvaluationContext, telemetry: TelemetrySource):
    models = telemetry.reader().read("models", columns=["model_id"])["model_id"].unique()
    known = set(context.instance.get_dynamic_partitions(model_partitions.name))
    new = sorted(set(models) - known)
    if not new:
        return dg.SkipReason(f"all {len(models)} models of the lake already have partitions")
    return dg.SensorResult(
        dynamic_partitions_requests=[model_partitions.build_add_request(new)]
    )


defs = dg.Definitions(sensors=[model_registry_sensor])
