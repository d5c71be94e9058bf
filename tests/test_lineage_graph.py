"""The lineage graph: contract tables and OpenLineage events in, a checked DAG out."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from lineage_world import lineage_tables

from hawkeye_dagster.analysis.lineage_graph import (
    build_lineage_graph,
    feature_node,
    graph_summary,
    merge_lineage,
    read_openlineage,
    related_groups,
    upstream_table,
)
from hawkeye_dagster.errors import ContractError, LineageCycleError, UnknownIdError


def _graph(**overrides):
    tables = lineage_tables() | overrides
    return build_lineage_graph(tables["lineage_nodes"], tables["lineage_edges"],
                               tables["features"], tables["pipelines"])


def test_nodes_carry_kind_pipeline_and_features():
    graph = _graph()
    assert graph.nodes["s1"] == {"kind": "source", "pipeline_id": "p_s1", "orchestrator": "dagster",
                                 "target": "s1_sensor", "features": ()}
    assert graph.nodes["s2"]["pipeline_id"] is None and graph.nodes["s2"]["orchestrator"] is None
    assert graph.nodes["nf1"]["features"] == ("f1",)
    assert set(graph.successors("x1")) == {"nf1", "nf2"}
    assert feature_node(graph, "f3") == "nf3"
    with pytest.raises(UnknownIdError, match="nope"):
        feature_node(graph, "nope")


def test_summary_counts():
    summary = graph_summary(_graph())
    assert summary["nodes"] == 8 and summary["edges"] == 6 and summary["features"] == 3
    assert summary["nodes_feature"] == 3 and summary["nodes_source"] == 3
    assert summary["pipelines"] == 5
    assert summary["pipelines_dagster"] == 2 and summary["pipelines_airflow"] == 2


def test_upstream_table_gives_depths_above_each_feature():
    table = upstream_table(_graph(), ["f1", "f3"])
    f1 = table[table["feature"] == "f1"].set_index("node_id")["depth"].to_dict()
    assert f1 == {"nf1": 0, "x1": 1, "t1": 2, "s1": 3, "s2": 3}
    f3 = table[table["feature"] == "f3"]
    assert list(f3["node_id"]) == ["nf3", "s3"]
    assert list(f3["kind"]) == ["feature", "source"]


def test_cycle_is_reported_with_its_nodes():
    edges = pd.concat([lineage_tables()["lineage_edges"],
                       pd.DataFrame({"upstream_id": ["nf1"], "downstream_id": ["s1"]})])
    with pytest.raises(LineageCycleError) as err:
        _graph(lineage_edges=edges)
    assert set(err.value.cycle) == {"s1", "t1", "x1", "nf1"}
    assert err.value.table == "lineage_edges"
    assert "s1" in str(err.value) and "nf1" in str(err.value)


def test_self_loop_is_a_cycle():
    edges = pd.concat([lineage_tables()["lineage_edges"],
                       pd.DataFrame({"upstream_id": ["t1"], "downstream_id": ["t1"]})])
    with pytest.raises(LineageCycleError, match="t1 -> t1"):
        _graph(lineage_edges=edges)


def test_unknown_nodes_are_named():
    edges = pd.concat([lineage_tables()["lineage_edges"],
                       pd.DataFrame({"upstream_id": ["s1"], "downstream_id": ["ghost"]})])
    with pytest.raises(ContractError, match="ghost") as err:
        _graph(lineage_edges=edges)
    assert (err.value.table, err.value.column) == ("lineage_edges", "downstream_id")
    features = pd.DataFrame({"feature_name": ["f9"], "lineage_node_id": ["nowhere"]})
    with pytest.raises(ContractError, match="nowhere") as err:
        _graph(features=features)
    assert (err.value.table, err.value.column) == ("features", "lineage_node_id")


def test_alerts_group_by_shared_ancestors_and_bursts_in_time():
    alerts = pd.DataFrame({
        "feature_name": ["f2", "f1", "f3", "f1", "f2"],
        "ts": pd.to_datetime(["2026-10-11 08:00", "2026-10-11 07:00", "2026-10-11 07:30",
                              "2026-10-11 20:00", "2026-10-11 23:00"], utc=True)})
    labels = related_groups(_graph(), alerts, pd.Timedelta(hours=6))
    # f1 and f2 share x1 (burst one); f3 shares nothing; 12 h later is another burst
    assert list(labels) == [0, 0, 1, 2, 2]


def _event(job, inputs, outputs, ts, *, version=None, airflow_dag=None):
    event = {
        "eventType": "COMPLETE", "eventTime": ts,
        "run": {"runId": f"run-{job}-{ts}", "facets": {}},
        "job": {"namespace": "prod", "name": job, "facets": {}},
        "inputs": [{"namespace": "postgres://db:5432", "name": n} for n in inputs],
        "outputs": [{"namespace": "postgres://db:5432", "name": n} for n in outputs],
        "producer": "https://github.com/OpenLineage/OpenLineage/tree/1.0/integration/spark",
    }
    if version:
        event["job"]["facets"]["sourceCodeLocation"] = {"type": "git", "url": "x", "version": version}
    if airflow_dag:
        event["producer"] = "https://github.com/apache/airflow/tree/providers-openlineage/1.0"
        event["job"]["facets"]["jobType"] = {"integration": "AIRFLOW", "jobType": "TASK",
                                             "processingType": "BATCH"}
        event["run"]["facets"]["parent"] = {"run": {"runId": "r"},
                                            "job": {"namespace": "prod", "name": airflow_dag}}
    return json.dumps(event)


def test_openlineage_events_become_lineage_tables(tmp_path):
    lines = [
        _event("clicks_dag.load", ["raw/clicks"], ["public.user_events"], "2026-10-01T00:00:00Z",
               airflow_dag="clicks_dag"),
        _event("features_job", ["public.user_events", "public.profiles"], ["features.ctr_7d"],
               "2026-10-01T01:00:00Z", version="a1"),
        _event("features_job", ["public.user_events", "public.profiles"], ["features.ctr_7d"],
               "2026-10-02T01:00:00Z", version="a1"),
        _event("features_job", ["public.user_events", "public.profiles"], ["features.ctr_7d"],
               "2026-10-03T01:00:00Z", version="b2"),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    tables = read_openlineage(path)

    nodes = tables["lineage_nodes"].set_index("node_id")
    assert nodes.loc["raw.clicks", "kind"] == "source"             # "/" is not allowed in ids
    assert nodes.loc["public.user_events", "pipeline_id"] == "clicks_dag.load"
    assert nodes.loc["features.ctr_7d", "kind"] == "table"
    assert set(map(tuple, tables["lineage_edges"].to_numpy())) == {
        ("raw.clicks", "public.user_events"), ("public.user_events", "features.ctr_7d"),
        ("public.profiles", "features.ctr_7d")}
    pipelines = tables["pipelines"].set_index("pipeline_id")
    assert tuple(pipelines.loc["clicks_dag.load"]) == ("airflow", "clicks_dag")
    assert tuple(pipelines.loc["features_job"]) == ("external", "features_job")
    changes = tables["lineage_changes"]
    assert list(changes["version"]) == ["b2"] and list(changes["node_id"]) == ["features.ctr_7d"]
    assert changes["ts"].iloc[0] == pd.Timestamp("2026-10-03T01:00:00Z")

    # a second source alongside the lake's own tables
    lake = {"lineage_nodes": pd.DataFrame({"node_id": ["features.ctr_7d", "ctr"],
                                           "kind": ["transform", "feature"],
                                           "pipeline_id": [None, None]}),
            "lineage_edges": pd.DataFrame({"upstream_id": ["features.ctr_7d"],
                                           "downstream_id": ["ctr"]})}
    merged = merge_lineage(lake, tables)
    graph = build_lineage_graph(merged["lineage_nodes"], merged["lineage_edges"],
                                pd.DataFrame({"feature_name": ["ctr 7d"], "lineage_node_id": ["ctr"]}),
                                merged["pipelines"])
    assert graph.nodes["features.ctr_7d"]["kind"] == "transform"   # the lake's row wins
    assert upstream_table(graph, ["ctr 7d"])["node_id"].tolist() == [
        "ctr", "features.ctr_7d", "public.profiles", "public.user_events", "raw.clicks"]


def test_openlineage_without_events_is_bad_input(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ContractError, match="no OpenLineage events"):
        read_openlineage(path)
