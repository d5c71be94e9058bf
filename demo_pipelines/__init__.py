"""A second Dagster code location: the upstream feature pipelines of the telemetry lake.

Each pipeline that ``pipelines`` says is orchestrated by Dagster becomes a job
over assets for the lineage nodes it produces, driven by the schedule or
sensor named by its ``target``; so when hawkeye-dagster pauses a pipeline,
the pause shows in this location's UI, and a resume turns it back on.
"""
