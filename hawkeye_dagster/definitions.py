"""The one Dagster ``Definitions`` of hawkeye-dagster, loaded by ``workspace.yaml``.

Each domain module (telemetry, features, lineage, snapshots, training, triage,
mitigation) exposes its own ``defs``; here they are merged and bound to the
resources that ``HAWKEYE_LAKE`` / ``HAWKEYE_SQL_URL`` select.
"""

import dagster as dg

from hawkeye_dagster.assets import telemetry
from hawkeye_dagster.resources import default_resources
from hawkeye_dagster.sensors import models

DOMAINS = [telemetry, models]

defs = dg.Definitions.merge(
    *(domain.defs for domain in DOMAINS),
    dg.Definitions(resources=default_resources()),
)
