"""Upstream root cause on simulated lakes: the right node first, and nothing on a clean world.

The bad features are the ones the simulator knows the incident reached (what
the feature step hands over), reported an hour after the true onset, or the
alerted feature at its first alert.
"""

from __future__ import annotations

import pandas as pd
import pytest

from hawkeye_dagster.gather.lineage import lineage_from_reader
from hawkeye_dagster.gather.upstream import upstream_from_reader
from hawkeye_dagster.lake.open import open_lake


def _analyse(lake, incident):
    reader = open_lake(str(lake))
    graph = lineage_from_reader(reader)
    entry = incident["entry"]
    if entry["kind"] == "feature_alert":
        alerts = reader.read("feature_alerts", equals={"feature_name": entry["feature"]})
        bad = {entry["feature"]: alerts["ts"].min()}
    else:
        reported = pd.Timestamp(incident["onset"]) + pd.Timedelta(hours=1)
        bad = dict.fromkeys(incident["suspects"]["features"], reported)
    return graph, upstream_from_reader(reader, graph, bad)


@pytest.mark.parametrize("scenario", ["upstream_corruption", "transform_change",
                                      "feature_alert_early"])
def test_simulated_incident_is_traced_to_its_origin(simulated, scenario):
    lake, truth = simulated(scenario)
    (incident,) = truth["incidents"]
    graph, analysis = _analyse(lake, incident)
    top = analysis.candidates.iloc[0]
    expected = incident["root_cause"]
    assert (top["kind"], top["id"]) == (expected["kind"], expected["id"])
    if expected["kind"] == "lineage_change":
        assert top["version"] == expected["version"]
    assert top["confidence"] > 0.9
    second = analysis.candidates.iloc[1]["confidence"] if len(analysis.candidates) > 1 else 0
    assert second < top["confidence"] - 0.3
    assert graph.nodes[top["node_id"]]["pipeline_id"] == incident["mitigation"]["pipeline_id"]
    for path in analysis.paths[top["id"]].values():
        assert path[0] == expected["id"] and graph.nodes[path[-1]]["kind"] == "feature"


def test_clean_world_blames_nothing(simulated):
    lake, truth = simulated("clean")
    reader = open_lake(str(lake))
    graph = lineage_from_reader(reader)
    for incident in truth["incidents"]:
        entry = incident["entry"]
        if entry["kind"] == "feature_alert":
            _, analysis = _analyse(lake, incident)
        elif "noop_change" in incident["details"]:
            # features below a node whose harmless config change is in lineage_changes
            node = incident["details"]["noop_change"]
            change = reader.read("lineage_changes", equals={"node_id": node})["ts"].min()
            below = [f for f, n in graph.graph["feature_nodes"].items()
                     if n in graph.successors(node)]
            analysis = upstream_from_reader(reader, graph,
                                            dict.fromkeys(below, change + pd.Timedelta(hours=3)))
        else:
            continue
        assert not analysis.upstream_moved, analysis.finding()
        assert (analysis.candidates["confidence"] < 0.5).all()
        assert "lineage_change" not in set(analysis.candidates["kind"])
