"""The lineage graph: contract tables in, a checked DAG out (OpenLineage: ``test_openlineage``)."""

from __future__ import annotations

import pandas as pd
import pytest
from lineage_world import lineage_tables

from hawkeye_dagster.analysis.alert_groups import related_groups
from hawkeye_dagster.analysis.lineage_graph import (build_lineage_graph, feature_node,
                                                    graph_summary, upstream_table)
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
