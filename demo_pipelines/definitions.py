"""The lake's Dagster-orchestrated upstream pipelines as assets, jobs and schedules/sensors.

Reads the lineage of the lake that ``HAWKEYE_LAKE`` / ``HAWKEYE_SQL_URL``
select (the demo lake by default). A ``target`` whose name ends in
``sensor`` becomes a sensor, any other a schedule (hourly); both start
running, as a production pipeline would. The assets only record that they
ran: the demo's data already lies in the lake.
"""

import hashlib
import re

import dagster as dg
import networkx as nx

from hawkeye_dagster import settings
from hawkeye_dagster.gather.lineage import lineage_from_reader
from hawkeye_dagster.lake.open import open_lake


def name(text: str) -> str:
    """Dagster names allow letters, digits and ``_`` only; ids may hold more."""
    return re.sub(r"\W", "_", text, flags=re.ASCII)


def asset_key(node_id: str) -> dg.AssetKey:
    """``upstream/<node>``; a hash tells apart ids that differ only in characters replaced."""
    safe = name(node_id)
    if safe != node_id:
        safe += "_" + hashlib.sha1(node_id.encode()).hexdigest()[:6]
    return dg.AssetKey(["upstream", safe])


def pipeline_defs(graph: nx.DiGraph) -> dg.Definitions:
    """One multi-asset, job and schedule or sensor per ``dagster`` pipeline of the graph."""
    produced: dict[str, list[str]] = {}
    for node, attrs in graph.nodes(data=True):
        if attrs["orchestrator"] == "dagster":
            produced.setdefault(attrs["pipeline_id"], []).append(node)
    assets, jobs, schedules, sensors = [], [], [], []
    for pipeline, nodes in sorted(produced.items()):
        target = graph.nodes[nodes[0]]["target"]
        specs = [dg.AssetSpec(asset_key(n), group_name=name(pipeline),
                              description=f"lineage node {n!r}, produced by pipeline {pipeline!r}",
                              kinds={"python"}, owners=["team:data-platform"],
                              deps=[asset_key(u) for u in graph.predecessors(n)
                                    if graph.nodes[u]["orchestrator"] == "dagster"])
                 for n in nodes]
        assets.append(_pipeline_assets(pipeline, specs))
        job = dg.define_asset_job(f"{name(pipeline)}_job",
                                  selection=dg.AssetSelection.assets(*(s.key for s in specs)))
        jobs.append(job)
        if target.endswith("sensor"):
            sensors.append(dg.SensorDefinition(
                name=target, job=job, minimum_interval_seconds=300,
                default_status=dg.DefaultSensorStatus.RUNNING,
                evaluation_fn=lambda context: dg.SkipReason("no new upstream files"),
                description=f"drives pipeline {pipeline!r}"))
        else:
            schedules.append(dg.ScheduleDefinition(
                name=target, job=job, cron_schedule="0 * * * *",
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description=f"drives pipeline {pipeline!r}"))
    return dg.Definitions(assets=assets, jobs=jobs, schedules=schedules, sensors=sensors)


def _pipeline_assets(pipeline: str, specs: list[dg.AssetSpec]) -> dg.AssetsDefinition:
    @dg.multi_asset(name=name(pipeline), specs=specs)
    def refresh(context: dg.AssetExecutionContext):
        for key in context.selected_asset_keys:
            yield dg.MaterializeResult(asset_key=key, metadata={"pipeline": pipeline})

    return refresh


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded when Dagster loads the location (not at import), from the configured lake."""
    source = settings.telemetry_source()
    if source.lake == str(settings.demo_lake()) and not settings.demo_lake().exists():
        # nothing to mirror until `hawkeye-dagster demo` has generated the demo lake
        return dg.Definitions()
    return pipeline_defs(lineage_from_reader(open_lake(lake=source.lake, sql_url=source.sql_url)))
