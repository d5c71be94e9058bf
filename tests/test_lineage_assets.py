"""The lineage assets materialized on a small lake, and the auto-pause sensor on a real instance."""

from __future__ import annotations

import dagster as dg
import pytest
from lineage_world import write_lake

from hawkeye_dagster.assets.lineage import (
    LINEAGE_DIR,
    lineage_graph,
    lineage_node_changepoints,
    upstream_root_cause,
)
from hawkeye_dagster.assets.mitigation import (
    auto_pause_sensor,
    lineage_root_cause,
)
from hawkeye_dagster.incidents import INCIDENTS_DIR, REPORTS_DIR, Incident
from hawkeye_dagster.resources import HawkeyeStorage, MitigationSettings, TelemetrySource


@pytest.fixture
def resources(tmp_path):
    write_lake(tmp_path / "lake")
    return {"telemetry": TelemetrySource(lake=str(tmp_path / "lake")),
            "storage": HawkeyeStorage(root=str(tmp_path / "out"))}


def _metadata(result, node):
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_lineage_graph_asset_counts_and_stores(resources):
    result = dg.materialize([lineage_graph], resources=resources)
    metadata = _metadata(result, "lineage_graph")
    assert (metadata["nodes"], metadata["edges"], metadata["features"]) == (8, 6, 3)
    assert metadata["pipelines_dagster"] == 2
    assert "![lineage graph](data:image/png;base64," in metadata["lineage"]
    above = resources["storage"].read_parquet(LINEAGE_DIR, "feature_upstream.parquet")
    assert set(above.loc[above["feature"] == "f1", "node_id"]) == {"nf1", "x1", "t1", "s1", "s2"}


def test_daily_changepoints_find_the_day_it_moved_and_nothing_on_a_quiet_day(resources):
    with dg.instance_for_test() as instance:
        moved = dg.materialize([lineage_node_changepoints], partition_key="2026-10-11",
                               resources=resources, instance=instance)
        quiet = dg.materialize([lineage_node_changepoints], partition_key="2026-10-09",
                               resources=resources, instance=instance)
    assert _metadata(quiet, "lineage_node_changepoints")["moved"] == 0
    assert _metadata(moved, "lineage_node_changepoints")["moved"] == 5   # s1 and its heirs
    day = resources["storage"].read_parquet(LINEAGE_DIR, "changepoints", "2026-10-11.parquet")
    assert set(day["node_id"]) == {"s1", "t1", "x1", "nf1", "nf2"}
    assert set(day["stat"]) == {"null_fraction"}


def _upstream(resources, instance, features) -> str:
    incident = Incident(entry={"kind": "feature_alert", "feature": next(iter(features)),
                               "features": features},
                        start="2026-10-04T08:00:00+00:00", end="2026-10-11T08:00:00+00:00")
    key = incident.incident_id
    resources["storage"].write_json(incident.to_json(), INCIDENTS_DIR, f"{key}.json")
    instance.add_dynamic_partitions("incident", [key])
    dg.materialize([upstream_root_cause], partition_key=key, resources=resources,
                   instance=instance)
    return key


def _auto_tick(instance, mitigation, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"mitigation": mitigation}) as context:
        return auto_pause_sensor(context)


def _report(instance, incident, root_cause, confidence):
    instance.add_dynamic_partitions("incident", [incident])
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key="incident_report", partition=incident,
        metadata={"root_cause": root_cause, "confidence": confidence}))


def test_auto_pause_only_when_enabled_and_confident():
    with dg.instance_for_test() as instance:
        _report(instance, "a", "lineage_node s1", 0.95)
        _report(instance, "b", "snapshot m-v2", 0.99)          # not a pause's business
        _report(instance, "c", "lineage_change x1", 0.5)       # not sure enough

        off = _auto_tick(instance, MitigationSettings())
        assert not off.run_requests and "automatic pausing is off" in off.skip_reason.skip_message

        on = _auto_tick(instance, MitigationSettings(auto_pause=True, min_confidence=0.8))
        (request,) = on.run_requests
        assert request.run_key == "auto-pause:a"
        config = request.run_config["ops"]["pause_upstream_pipelines"]["config"]
        assert config["incident"] == "a" and config["automatic"] and not config["dry_run"]
        again = _auto_tick(instance, MitigationSettings(auto_pause=True), on.cursor)
        assert isinstance(again, dg.SkipReason) and "no new" in again.skip_message


def test_the_root_cause_to_pause_comes_from_the_report_else_the_upstream_analysis(resources):
    storage = resources["storage"]
    with dg.instance_for_test() as instance:
        key = _upstream(resources, instance, {"f1": "2026-10-11T07:00:00+00:00"})
    cause = lineage_root_cause(storage, key)
    assert cause["node"] == "s1" and cause["source"] == "upstream analysis"
    assert cause["features"] == ["f1"] and cause["confidence"] > 0.9

    report = {"root_causes": [{"kind": "lineage_change", "id": "x1", "confidence": 0.9,
                               "summary": "", "version": "v2"}],
              "suspects": {"features": ["f1", "f2"]}}
    storage.write_json(report, REPORTS_DIR, f"{key}.json")
    assert lineage_root_cause(storage, key) == {"node": "x1", "confidence": 0.9, "features": [
        "f1", "f2"], "source": "incident report"}
    report["root_causes"][0]["kind"] = "snapshot"
    storage.write_json(report, REPORTS_DIR, f"{key}.json")
    assert lineage_root_cause(storage, key) is None
