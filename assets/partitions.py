"""Partitions shared by the project's assets.

Days are UTC dates (the contract's ``serving_samples.date``); models,
snapshots, incidents and training partitions are dynamic because they appear
in the lake while Dagster runs. ``HAWKEYE_START_DATE`` sets the first day.
"""

import os

import dagster as dg

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("HAWKEYE_START_DATE", "2026-01-01"), end_offset=1
)
model_partitions = dg.DynamicPartitionsDefinition(name="model")
model_day_partitions = dg.MultiPartitionsDefinition(
    {"date": daily_partitions, "model": model_partitions}
)
snapshot_partitions = dg.DynamicPartitionsDefinition(name="snapshot")
incident_partitions = dg.DynamicPartitionsDefinition(name="incident")
#: keys are ``dataset_id/partition`` as in the report's ``training_partitions``
training_partition_partitions = dg.DynamicPartitionsDefinition(name="training_partition")
