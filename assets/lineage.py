"""Lineage assets: the upstream graph, daily change points of node statistics, and the
upstream root cause of each feature-alert incident.

Thin wiring over :mod:`hawkeye_dagster.analysis.lineage_graph`,
:mod:`~hawkeye_dagster.analysis.changepoints` and
:mod:`~hawkeye_dagster.analysis.upstream_rca`; results go to storage under
``lineage/`` and ``incidents/<id>/``.
"""

import io

import dagster as dg
import networkx as nx
import pandas as pd

from hawkeye_dagster.analysis.changepoints import detect_changepoints, pivot_node_stats
from hawkeye_dagster.analysis.lineage_graph import (feature_node, graph_summary, node_attributes,
                                                    upstream_subgraph, upstream_table)
from hawkeye_dagster.analysis.upstream_rca import UpstreamSettings
from hawkeye_dagster.assets import automation
from hawkeye_dagster.assets.partitions import daily_partitions, incident_partitions
from hawkeye_dagster.assets.metadata import png_md
from hawkeye_dagster.assets.telemetry import telemetry_key
from hawkeye_dagster.assets.triage import read_incident
from hawkeye_dagster.gather.lineage import lineage_from_reader
from hawkeye_dagster.gather.upstream import upstream_from_reader
from hawkeye_dagster.incidents import INCIDENTS_DIR, Incident
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage.entry import entry_features, entry_onsets

GROUP = "lineage"
OWNERS = ["team:ml-observability"]
LINEAGE_DIR = "lineage"
#: graphs larger than this are shown as tables only (a picture would be unreadable)
MAX_DRAWN_NODES = 150
#: upstream analysis output of an incident: ``incidents/<id>/UPSTREAM_FILE``
UPSTREAM_FILE = "upstream.json"
_DAY = pd.Timedelta(days=1)


class LineageSourceConfig(dg.Config):
    """Where lineage comes from besides the lake's tables."""

    openlineage_events: str | None = None
    """A JSON-lines file of OpenLineage run events to merge in (optional)."""


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"networkx", "parquet"},
    deps=[telemetry_key(t) for t in ("lineage_nodes", "lineage_edges", "features", "pipelines")],
    automation_condition=automation.refresh("0 * * * *"),
    description="The upstream data lineage graph (lake tables, optionally merged with OpenLineage "
                "events): node counts, and the subgraph above each feature.",
)
def lineage_graph(config: LineageSourceConfig, telemetry: TelemetrySource,
                  storage: HawkeyeStorage) -> dg.MaterializeResult:
    graph = lineage_from_reader(telemetry.reader(), config.openlineage_events)
    nodes = node_attributes(graph).reset_index()
    nodes["features"] = nodes["features"].map(list)
    storage.write_parquet(nodes, LINEAGE_DIR, "nodes.parquet")
    storage.write_parquet(pd.DataFrame(graph.edges, columns=["upstream_id", "downstream_id"]),
                          LINEAGE_DIR, "edges.parquet")
    above = upstream_table(graph, graph.graph["feature_nodes"])
    storage.write_parquet(above, LINEAGE_DIR, "feature_upstream.parquet")

    per_feature = above[above["depth"] > 0].groupby("feature").agg(
        upstream_nodes=("node_id", "size"), depth=("depth", "max"),
        sources=("node_id", lambda ids: ", ".join(i for i in ids if graph.nodes[i]["kind"] == "source")),
        pipelines=("pipeline_id", lambda p: ", ".join(sorted(set(p.dropna())))))
    summary = graph_summary(graph)
    text = "\n".join([
        "### Lineage graph", "", _md_counts(summary), "",
        png_md(_draw(graph), "lineage graph") if len(graph) <= MAX_DRAWN_NODES else
        f"*({len(graph)} nodes: too many to draw; see the table below)*", "",
        "### Upstream of each feature", "", per_feature.reset_index().to_markdown(index=False)])
    return dg.MaterializeResult(metadata={
        **{k: dg.MetadataValue.int(v) for k, v in summary.items()},
        "lineage": dg.MetadataValue.md(text),
        "storage": dg.MetadataValue.path(str(storage.path(LINEAGE_DIR, "nodes.parquet").parent)),
    })


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"pandas", "parquet"},
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[telemetry_key("lineage_node_stats")],
    description="Change points of every lineage node's statistics per day: when a series moved, "
                "by how much, against like hours of the week before (median/MAD).",
)
def lineage_node_changepoints(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                              storage: HawkeyeStorage) -> dg.MaterializeResult:
    window = context.partition_time_window
    start, end = pd.Timestamp(window.start), pd.Timestamp(window.end)
    baseline = pd.Timedelta(days=7)
    stats = telemetry.reader().read("lineage_node_stats",
                                    time_range=TimeRange(start - baseline, end))
    wide = pivot_node_stats(stats)
    moved = []
    for day in pd.date_range(start, end - _DAY, freq="D"):
        points = detect_changepoints(wide, day, day + _DAY, baseline=baseline) if len(wide) \
            else pd.DataFrame(columns=["moved"])
        found = points[points["moved"]].assign(date=day.strftime("%Y-%m-%d"))
        storage.write_parquet(found, LINEAGE_DIR, "changepoints", f"{day:%Y-%m-%d}.parquet")
        moved.append(found)
    moved = pd.concat(moved, ignore_index=True)
    top = moved.reindex(moved["z"].abs().sort_values(ascending=False).index).head(20) \
        if len(moved) else moved
    return dg.MaterializeResult(metadata={
        "days": dg.MetadataValue.int(int((end - start) / _DAY)),
        "series": dg.MetadataValue.int(wide.shape[1]),
        "moved": dg.MetadataValue.int(len(moved)),
        "largest moves": dg.MetadataValue.md(
            top[["date", "node_id", "stat", "onset", "before", "after", "z"]].to_markdown(index=False)
            if len(top) else "no series moved"),
    })


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"networkx", "pandas"},
    partitions_def=incident_partitions,
    deps=[lineage_graph, telemetry_key("lineage_node_stats"), telemetry_key("lineage_changes")],
    description="Upstream root cause of an incident's bad features: the ranked lineage nodes and "
                "deployed changes, with reasons, confidence and the path from cause to feature.",
)
def upstream_root_cause(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                        storage: HawkeyeStorage) -> dg.MaterializeResult:
    incident_id = context.partition_key
    incident = read_incident(storage, incident_id)
    onsets = bad_features(incident)
    if not onsets:
        storage.write_json({"incident": incident_id, "root_causes": [], "finding":
                            "no features to trace"}, INCIDENTS_DIR, incident_id, UPSTREAM_FILE)
        return dg.MaterializeResult(metadata={"finding": "no features to trace upstream"})
    reader = telemetry.reader()
    graph = lineage_from_reader(reader)
    analysis = upstream_from_reader(reader, graph, onsets, UpstreamSettings())
    top = analysis.candidates.iloc[0]
    result = {
        "incident": incident_id,
        "features": {f: t.isoformat() for f, t in analysis.features.items()},
        "finding": analysis.finding(),
        "upstream_moved": analysis.upstream_moved,
        "root_causes": analysis.root_causes(),
        "cause_node": None if top["kind"] == "feature" else top["node_id"],
        "confidence": float(top["confidence"]),
        "paths": analysis.paths,
    }
    storage.write_json(result, INCIDENTS_DIR, incident_id, UPSTREAM_FILE)
    storage.write_parquet(analysis.candidates, INCIDENTS_DIR, incident_id,
                          "upstream_candidates.parquet")
    path = next(iter(analysis.paths.get(top["id"], {}).values()), [])
    above = upstream_subgraph(graph, (feature_node(graph, f) for f in analysis.features))
    shown = analysis.candidates.head(10)[["kind", "id", "confidence", "summary"]]
    text = "\n".join([f"**{analysis.finding()}**", "",
                      "Path: " + " → ".join(path) if path else "", "",
                      shown.to_markdown(index=False), "", png_md(_draw(above, path), "upstream")])
    return dg.MaterializeResult(metadata={
        "confidence": dg.MetadataValue.float(float(top["confidence"])),
        "cause": dg.MetadataValue.text(str(top["id"])),
        "kind": dg.MetadataValue.text(str(top["kind"])),
        "upstream": dg.MetadataValue.md(text),
    })


def bad_features(incident: Incident) -> dict[str, pd.Timestamp]:
    """The incident's bad features and when each went bad: the entry's alert times (as the
    feature-alert sensor writes them), else the end of the incident's window."""
    if incident.entry.get("kind") != "feature_alert":
        return {}
    onsets = entry_onsets(incident.entry)
    return {f: onsets.get(f, incident.window.end) for f in entry_features(incident.entry)}


def _md_counts(summary: dict[str, int]) -> str:
    return "\n".join(f"- **{k.replace('_', ' ')}**: {v}" for k, v in summary.items())


def _draw(graph: nx.DiGraph, path: list[str] | None = None) -> bytes:
    """A layered picture of the graph (sources left, features right), ``path`` in red; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layered = nx.DiGraph(graph.edges)
    layered.add_nodes_from(graph.nodes)
    for layer, nodes in enumerate(nx.topological_generations(layered)):
        for node in nodes:
            layered.nodes[node]["layer"] = layer
    position = nx.multipartite_layout(layered, subset_key="layer")
    on_path = set(path or [])
    colors = {"source": "#8dd3c7", "table": "#80b1d3", "transform": "#fdb462", "feature": "#b3de69"}
    figure, axes = plt.subplots(figsize=(12, max(4, len(graph) / 6)))
    nx.draw_networkx_edges(layered, position, ax=axes, alpha=0.3, arrows=True, arrowsize=8)
    nx.draw_networkx_edges(layered, position, ax=axes, edge_color="red", width=2,
                           edgelist=list(zip(path or [], (path or [])[1:])))
    nx.draw_networkx_nodes(layered, position, ax=axes, node_size=120,
                           node_color=[colors.get(graph.nodes[n].get("kind"), "#ccc") for n in layered],
                           edgecolors=["red" if n in on_path else "none" for n in layered])
    nx.draw_networkx_labels(layered, position, ax=axes, font_size=6)
    axes.set_axis_off()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


defs = dg.Definitions(assets=[lineage_graph, lineage_node_changepoints, upstream_root_cause])
