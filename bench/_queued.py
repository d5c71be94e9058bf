"""The code location that ``bench_queued_throughput`` serves with ``dagster dev``.

It is the deployment's location (:mod:`hawkeye_dagster.definitions`: the same assets, jobs and
resources, bound from ``HAWKEYE_LAKE`` / ``HAWKEYE_HOME``) without its sensors and schedules.
The sensors are running by default and, on a fresh instance, their first ticks register the
lake's history and launch runs of their own (recent snapshots, feature-alert incidents), which
would take queue slots from the runs being timed. The automation-condition sensor that Dagster
derives from the assets' conditions is stopped by default.
"""

import dagster as dg

from hawkeye_dagster import definitions as deployment

defs = dg.Definitions(assets=deployment.defs.assets, asset_checks=deployment.defs.asset_checks,
                      jobs=deployment.defs.jobs, resources=deployment.defs.resources,
                      executor=deployment.defs.executor, loggers=deployment.defs.loggers)
