"""What the UI shows, through real materializations on simulated incidents: the model graph of a
diagnosed snapshot, the incident report's pictures and its links to each step's evidence, and
the feature ranking's hourly shift."""

from __future__ import annotations

import base64
import re
import struct
import warnings

import dagster as dg
import networkx as nx
import pytest

from hawkeye_dagster.assets import features, telemetry
from hawkeye_dagster.assets import triage as triage_assets
from hawkeye_dagster.assets.partitions import model_partitions, snapshot_partitions
from hawkeye_dagster.assets.snapshots import SNAPSHOT_DIAGNOSTICS, STORE
from hawkeye_dagster.incidents import Incident
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource

warnings.filterwarnings("ignore", category=dg.BetaWarning)
UI = "http://dagster.example:3000"


@pytest.fixture(autouse=True)
def webserver(monkeypatch):
    monkeypatch.setenv("HAWKEYE_DAGSTER_URL", UI + "/")


def _resources(lake, root) -> dict:
    return {"telemetry": TelemetrySource(lake=str(lake)), "storage": HawkeyeStorage(root=str(root))}


def _pictures(markdown: str) -> dict[str, bytes]:
    """The PNGs embedded in markdown metadata, by alt text."""
    return {alt: base64.b64decode(data) for alt, data in
            re.findall(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)}


def _assert_readable_png(png: bytes, width: int = 1200) -> None:
    """A PNG of the given width (its IHDR header), large enough to hold a drawing: 1200 px
    fits Dagster's markdown dialog (about 1280 px) without cutting the right side."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    found_width, height = struct.unpack(">II", png[16:24])
    assert found_width == width and height > 300
    assert len(png) > 30_000


def _report(lake, root, incident: dict, instance) -> dg.MetadataMapping:
    defs = dg.Definitions.merge(telemetry.defs, triage_assets.defs,
                                dg.Definitions(resources=_resources(lake, root)))
    opened = Incident(incident["entry"], incident["window"]["start"], incident["window"]["end"])
    triage_assets.materialize_incident(defs, opened, instance)
    event = instance.get_latest_materialization_event(triage_assets.INCIDENT_REPORT)
    return event.asset_materialization.metadata, event.run_id


def test_snapshot_report_draws_the_model_graph_with_the_bad_walk(simulated, tmp_path):
    lake, truth = simulated("nan_snapshot")
    [incident] = truth["incidents"]
    snapshot = incident["entry"]["snapshot"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(snapshot_partitions.name, [snapshot])
        result = dg.materialize(SNAPSHOT_DIAGNOSTICS, partition_key=snapshot, instance=instance,
                                resources=_resources(lake, tmp_path), raise_on_error=False)
    [report] = result.asset_materializations_for_node("snapshot_report")
    pictures = _pictures(report.metadata["report"].value)
    assert {"model_graph.png", "activations.png"} <= set(pictures)
    _assert_readable_png(pictures["model_graph.png"])
    assert (tmp_path / STORE / snapshot / "model_graph.png").read_bytes() == \
        pictures["model_graph.png"]
    edges = HawkeyeStorage(root=str(tmp_path)).read_parquet(STORE, snapshot,
                                                            "activation_edges.parquet")
    assert {"source", "target"} == set(edges.columns)
    assert incident["details"]["graph_node"] in set(edges["target"])


def test_each_step_links_to_its_evidence_and_the_lineage_path_is_drawn(simulated, tmp_path):
    lake, truth = simulated("upstream_corruption")
    incident = truth["incidents"][0]
    model = incident["suspects"]["models"][0]
    day = incident["onset"][:10]
    with dg.instance_for_test() as instance:
        metadata, run_id = _report(lake, tmp_path, incident, instance)
    steps = {key.split(" ", 2)[2]: value.url for key, value in metadata.items()
             if key.startswith("step ")}
    assert steps["topline"] == f"{UI}/assets/telemetry/topline_metrics"
    assert steps["topline_to_models"] == (f"{UI}/assets/telemetry/serving_samples"
                                          f"?view=partitions&partition={day}%7C{model}")
    assert steps["model_to_features"] == (f"{UI}/assets/feature_ranking"
                                          f"?view=partitions&partition={model}")
    assert steps["features_to_upstream"] == f"{UI}/assets/lineage_graph"
    assert metadata["this run"].url == f"{UI}/runs/{run_id}"

    markdown = metadata["report"].value
    table = markdown[markdown.index("### Evidence of each step"):]
    assert f"[feature_drift {day}/{model}]({UI}/assets/feature_drift?view=partitions" \
           f"&partition={day}%7C{model})" in table
    assert f"({UI}/assets/lineage_node_changepoints?view=partitions&partition={day})" in table
    pictures = _pictures(markdown)
    _assert_readable_png(pictures["Lineage path"])


def test_a_blamed_snapshot_is_drawn_in_the_incident_report(simulated, tmp_path):
    lake, truth = simulated("nan_snapshot")
    [incident] = truth["incidents"]
    snapshot = incident["root_cause"]["id"]
    with dg.instance_for_test() as instance:
        metadata, _ = _report(lake, tmp_path, incident, instance)
    assert metadata["step 1 snapshot_diagnosis"].url == \
        f"{UI}/assets/snapshot_report?view=partitions&partition={snapshot}"
    _assert_readable_png(_pictures(metadata["report"].value)[f"Model graph of {snapshot}"])


def test_the_ranking_plots_its_top_features_hourly_shift(simulated, tmp_path):
    lake, truth = simulated("transform_change")
    incident, model = truth["incidents"][0], "mp_value"
    config = {"onset": incident["onset"], "end": incident["window"]["end"]}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(model_partitions.name, [model])
        result = dg.materialize([features.feature_ranking], partition_key=model,
                                instance=instance, resources=_resources(lake, tmp_path),
                                run_config={"ops": {"feature_ranking": {"config": config}}})
    [ranking] = result.asset_materializations_for_node("feature_ranking")
    png = _pictures(ranking.metadata["hourly_shift"].value)["ranking_hourly_shift.png"]
    _assert_readable_png(png)
    assert (tmp_path / features.STORE / model / "ranking_hourly_shift.png").exists()


def test_a_wide_model_graph_keeps_the_dialog_width():
    """A row of more boxes than fit 1200 px gets smaller labels and wraps, never a wider PNG."""
    import json

    import pandas as pd

    from hawkeye_dagster.analysis import model_graph_plot as plot

    def node(name, op, batched=True, bad=False):
        return {"node": name, "op": op, "target": "aten.linear" if op == "call_function" else op,
                "shape": json.dumps([4, 16]), "batched": batched, "min": -1.5, "max": 2.25,
                "nan_rows": 3 * bad, "inf_rows": 0, "extreme_rows": 0, "nonfinite_values": 0,
                "bad": bad}

    nodes = [node("x", "placeholder"), node("cat", "call_function", bad=True)]
    edges = []
    for i in range(14):
        nodes += [node(f"branch_linear_{i}", "call_function", bad=i == 1),
                  node(f"branch_{i}_weight", "get_attr", batched=False)]
        edges += [("x", f"branch_linear_{i}"), (f"branch_{i}_weight", f"branch_linear_{i}"),
                  (f"branch_linear_{i}", "cat")]
    edges.append(("cat", "output"))
    edges, nodes = pd.DataFrame(edges, columns=["source", "target"]), pd.DataFrame(nodes)
    png = plot.model_graph_plot(edges, nodes, walk=["x", "branch_linear_1", "cat", "output"],
                                features=["likes 7d"], title="a wide graph")
    _assert_readable_png(png)
    position, columns, lines = plot._layout(
        nx.DiGraph(list(edges.itertuples(index=False))), nodes.set_index("node"),
        plot._columns(24, plot.MIN_FONT))
    assert columns <= plot._columns(24, plot.MIN_FONT) and lines > 4
    assert max(x for x, _ in position.values()) < columns
