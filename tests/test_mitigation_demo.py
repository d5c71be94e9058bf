"""The ``demo_pipelines`` code location: every Dagster pipeline of a lake, driven by its target."""

from __future__ import annotations

import dagster as dg

from demo_pipelines.definitions import asset_key, pipeline_defs
from hawkeye_dagster.gather.lineage import lineage_from_reader
from hawkeye_dagster.lake.open import open_lake


def test_demo_location_mirrors_the_simulated_dagster_pipelines(simulated):
    lake, _ = simulated("upstream_corruption")
    reader = open_lake(str(lake))
    graph = lineage_from_reader(reader)
    repository = pipeline_defs(graph).get_repository_def()

    pipelines = reader.read("pipelines")
    targets = set(pipelines.loc[pipelines["orchestrator"] == "dagster", "target"])
    schedules = {s.name for s in repository.schedule_defs}
    sensors = {s.name for s in repository.sensor_defs}
    assert schedules | sensors == targets and not schedules & sensors
    assert all(name.endswith("sensor") for name in sensors)
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING
               for s in repository.schedule_defs)

    produced = {n for n, o in graph.nodes(data="orchestrator") if o == "dagster"}
    assert repository.asset_graph.get_all_asset_keys() == {asset_key(n) for n in produced}
    for instigator in [*repository.schedule_defs, *repository.sensor_defs]:
        job = repository.get_job(instigator.job_name)
        (pipeline,) = {graph.nodes[n]["pipeline_id"] for n in produced
                       if graph.nodes[n]["target"] == instigator.name}
        assert job.asset_layer.selected_asset_keys == {
            asset_key(n) for n in produced if graph.nodes[n]["pipeline_id"] == pipeline}


def test_asset_keys_stay_distinct_for_ids_that_differ_in_punctuation():
    assert asset_key("a.b") != asset_key("a b") != asset_key("a_b")
    assert asset_key("a_b") == dg.AssetKey(["upstream", "a_b"])
