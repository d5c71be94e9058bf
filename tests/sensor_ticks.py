"""What the daemon stores of a sensor tick, for tests that evaluate sensors by hand.

The daemon adds a tick's dynamic partitions, then creates one run per run request, tagged
with its run key; sensors that ask the instance what was launched see exactly that.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import RUN_KEY_TAG
from dagster._core.utils import make_new_run_id

#: the job of the runs of a sensor that targets assets rather than a job
ASSET_JOB = "__ASSET_JOB"


def store_tick(instance: dg.DagsterInstance, result: Any, sensor: dg.SensorDefinition) -> None:
    """``result``'s partitions and runs, as the daemon stores them for ``sensor``; the runs
    are created, not launched. ``result``: a ``SensorResult``, or the ``SensorExecutionData``
    of ``evaluate_tick``."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for request in result.run_requests or []:
        target = ASSET_JOB if sensor.asset_selection is not None else sensor.job_name
        instance.add_run(DagsterRun(job_name=request.job_name or target,
                                    run_id=make_new_run_id(),
                                    tags={**request.tags, RUN_KEY_TAG: request.run_key}))
