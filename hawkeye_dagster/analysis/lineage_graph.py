"""The upstream data lineage graph: the contract's lineage tables -> ``networkx.DiGraph``.

Nodes are ``lineage_nodes.node_id`` with attributes ``kind``, ``pipeline_id``,
``orchestrator``, ``target`` (from ``pipelines``; ``None`` when the node has no
pipeline or the pipeline is not listed) and ``features`` (the feature names
whose lineage node it is). Edges point downstream. ``graph.graph["feature_nodes"]``
maps each feature name to its node. A cycle is bad input
(:class:`~hawkeye_dagster.errors.LineageCycleError` naming the nodes on it), by the rules
of :mod:`hawkeye_dagster.lineage_check`. This module builds and queries the graph; a lake's
graph, OpenLineage events joined, is read by
:func:`~hawkeye_dagster.gather.lineage.lineage_from_reader`, and alerts are grouped over it
by :mod:`hawkeye_dagster.analysis.alert_groups`.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from contextlib import contextmanager

import networkx as nx
import numpy as np
import pandas as pd

from hawkeye_dagster.errors import UnknownIdError
from hawkeye_dagster.lineage_check import checked_edges, node_codes


def build_lineage_graph(
    nodes: pd.DataFrame,
    edges: pd.DataFrame,
    features: pd.DataFrame | None = None,
    pipelines: pd.DataFrame | None = None,
) -> nx.DiGraph:
    """Build the lineage graph from the contract's tables, checking references and acyclicity.

    Parameters
    ----------
    nodes, edges, features, pipelines:
        Frames of the contract tables ``lineage_nodes``, ``lineage_edges``,
        ``features`` and ``pipelines`` (the last two may be omitted).

    Returns
    -------
    The acyclic lineage graph. Time and memory are linear in nodes + edges.

    Raises
    ------
    ContractError
        An edge or feature names a node missing from ``lineage_nodes``.
    LineageCycleError
        The edges form a cycle.
    """
    nodes = nodes.drop_duplicates("node_id")
    node_ids, up, down = checked_edges(nodes, edges)

    names = node_ids.to_numpy(dtype=object)
    columns = {"kind": _objects(nodes["kind"]), "pipeline_id": _objects(nodes["pipeline_id"])}
    known = (pipelines.drop_duplicates("pipeline_id").set_index("pipeline_id")
             if pipelines is not None else pd.DataFrame(columns=["orchestrator", "target"]))
    for column in ("orchestrator", "target"):
        columns[column] = _objects(nodes["pipeline_id"].map(known[column]))
    feature_nodes: dict[str, str] = {}
    columns["features"] = np.empty(len(names), dtype=object)
    columns["features"].fill(())
    if features is not None and len(features):
        at = node_codes(features["lineage_node_id"], node_ids, table="features",
                        column="lineage_node_id")
        feature_names = _objects(features["feature_name"])
        groups = pd.Series(at).groupby(at).indices
        columns["features"][np.fromiter(groups, dtype=int, count=len(groups))] = pd.Series(
            [tuple(feature_names[rows]) for rows in groups.values()], dtype=object).to_numpy()
        feature_nodes = dict(zip(feature_names, names[at]))

    graph = nx.DiGraph(feature_nodes=feature_nodes)
    keys = list(columns)
    with _collector_paused():
        graph.add_nodes_from(zip(names, (dict(zip(keys, values))
                                         for values in zip(*columns.values()))))
        graph.add_edges_from(zip(names[up], names[down]))
    return graph


@contextmanager
def _collector_paused():
    """Millions of new dicts would trigger cyclic garbage collections that find nothing
    (a graph's dicts hold no cycles) and make the build superlinear; pause them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _objects(values: pd.Series) -> np.ndarray:
    """Python objects with ``None`` for missing values (what node attributes hold)."""
    return values.astype(object).where(values.notna(), None).to_numpy()


def feature_node(graph: nx.DiGraph, feature: str) -> str:
    """The lineage node of a feature; :class:`UnknownIdError` when the lake has no such feature."""
    try:
        return graph.graph["feature_nodes"][feature]
    except KeyError:
        raise UnknownIdError(f"feature {feature!r} is not in the lake's features table") from None


def upstream_subgraph(graph: nx.DiGraph, nodes: Iterable[str]) -> nx.DiGraph:
    """The nodes and everything upstream of them (a view of ``graph``)."""
    nodes = set(nodes)
    return graph.subgraph(nodes.union(*(nx.ancestors(graph, n) for n in nodes)))


def upstream_table(graph: nx.DiGraph, features: Iterable[str]) -> pd.DataFrame:
    """One row per (feature, upstream node): ``feature, node_id, depth, kind, pipeline_id``.

    ``depth`` is the number of edges from the node down to the feature's node
    (0 for the feature's own node); what the UI shows as the subgraph above
    each feature.
    """
    rows = []
    reverse = graph.reverse(copy=False)
    for feature in features:
        depths = nx.single_source_shortest_path_length(reverse, feature_node(graph, feature))
        rows.append(pd.DataFrame({"feature": feature, "node_id": list(depths),
                                  "depth": list(depths.values())}))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["feature", "node_id", "depth"])
    attrs = node_attributes(graph)
    return table.join(attrs[["kind", "pipeline_id"]], on="node_id").sort_values(
        ["feature", "depth", "node_id"], ignore_index=True)


def node_attributes(graph: nx.DiGraph) -> pd.DataFrame:
    """The graph's node attributes as a frame indexed by ``node_id``."""
    return pd.DataFrame.from_dict(dict(graph.nodes(data=True)), orient="index").rename_axis("node_id")


def graph_summary(graph: nx.DiGraph) -> dict[str, int]:
    """Counts for the UI: nodes by kind, edges, features, pipelines by orchestrator."""
    attrs = node_attributes(graph)
    summary = {"nodes": graph.number_of_nodes(), "edges": graph.number_of_edges(),
               "features": len(graph.graph["feature_nodes"])}
    if len(attrs):
        summary |= {f"nodes_{k}": int(v) for k, v in attrs["kind"].value_counts().items()}
        pipelines = attrs.dropna(subset=["pipeline_id"]).drop_duplicates("pipeline_id")
        summary["pipelines"] = len(pipelines)
        summary |= {f"pipelines_{k}": int(v)
                    for k, v in pipelines["orchestrator"].fillna("unlisted").value_counts().items()}
    return summary
