"""The upstream data lineage graph: the contract's lineage tables -> ``networkx.DiGraph``.

Nodes are ``lineage_nodes.node_id`` with attributes ``kind``, ``pipeline_id``,
``orchestrator``, ``target`` (from ``pipelines``; ``None`` when the node has no
pipeline or the pipeline is not listed) and ``features`` (the feature names
whose lineage node it is). Edges point downstream. ``graph.graph["feature_nodes"]``
maps each feature name to its node. A cycle is bad input
(:class:`~hawkeye_dagster.errors.LineageCycleError` naming the nodes on it).
OpenLineage events join the lake's tables in the reader
(:mod:`hawkeye_dagster.lake.openlineage`), so every graph built from a reader has them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from hawkeye_dagster.errors import ContractError, LineageCycleError, UnknownIdError
from hawkeye_dagster.lake.reader import TelemetryReader

_EXAMPLES = 3


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
    edges = edges[["upstream_id", "downstream_id"]].drop_duplicates()
    node_ids = pd.Index(nodes["node_id"])
    up, down = (_codes(edges[c], node_ids, table="lineage_edges", column=c)
                for c in ("upstream_id", "downstream_id"))
    _check_acyclic(node_ids, up, down)

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
        at = _codes(features["lineage_node_id"], node_ids, table="features",
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


def lineage_from_reader(reader: TelemetryReader,
                        openlineage: str | Path | None = None) -> nx.DiGraph:
    """The lineage graph of a lake: its reader's lineage tables, which hold the OpenLineage
    events the telemetry resource is configured with, plus those at ``openlineage`` (a file
    or folder of events, mapped by the default ``DatasetMapping``) when given.

    The lake's own rows win where both know a node, edge or pipeline.
    """
    if openlineage is not None:
        from hawkeye_dagster.lake.openlineage import OpenLineageSource

        reader = reader.with_lineage(OpenLineageSource(str(openlineage)))
    return build_lineage_graph(*(reader.read(t) for t in (
        "lineage_nodes", "lineage_edges", "features", "pipelines")))


def _codes(ids: pd.Series, known: pd.Index, *, table: str, column: str) -> np.ndarray:
    """Positions of ``ids`` in ``known``; any id not there is bad input, named with examples."""
    codes = known.get_indexer(ids)
    if (codes < 0).any():
        unknown = ids[codes < 0].unique()
        examples = ", ".join(repr(u) for u in unknown[:_EXAMPLES])
        raise ContractError(f"{len(unknown)} id(s) not in lineage_nodes.node_id, e.g. {examples}",
                            table=table, column=column)
    return codes


def _objects(values: pd.Series) -> np.ndarray:
    """Python objects with ``None`` for missing values (what node attributes hold)."""
    return values.astype(object).where(values.notna(), None).to_numpy()


def _check_acyclic(node_ids: pd.Index, upstream: np.ndarray, downstream: np.ndarray) -> None:
    """Raise naming one cycle when any strongly connected component has more than one node."""
    from scipy.sparse import coo_array  # lazily: sensors build graphs too, and stay light
    from scipy.sparse.csgraph import connected_components

    self_loops = upstream == downstream
    if self_loops.any():
        raise LineageCycleError([node_ids[upstream[self_loops][0]]])
    n = len(node_ids)
    adjacency = coo_array((np.ones(len(upstream), dtype=np.int8), (upstream, downstream)),
                          shape=(n, n))
    _, labels = connected_components(adjacency, directed=True, connection="strong")
    sizes = np.bincount(labels)
    if (sizes > 1).any():
        members = np.flatnonzero(labels == np.argmax(sizes > 1))
        inside = np.isin(upstream, members) & np.isin(downstream, members)
        component = nx.DiGraph(zip(node_ids[upstream[inside]], node_ids[downstream[inside]]))
        raise LineageCycleError([u for u, _ in nx.find_cycle(component)])


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


def related_groups(graph: nx.DiGraph, alerts: pd.DataFrame, within: pd.Timedelta) -> np.ndarray:
    """Batch alerts into incidents: bursts in time, split by which features share upstream nodes.

    Alerts form a burst while each fires at most ``within`` after the one
    before; inside a burst, alerts whose features' nodes share an ancestor (or
    are the same node), directly or through other alerts of the burst, are
    one incident. ``alerts`` has ``feature_name`` and ``ts`` (features must be
    in the graph). Returns an incident label per alert ``[n_alerts]`` (0, 1,
    ... in order of each incident's first alert). Cost: one ancestor walk per
    distinct feature plus near-linear union work, whatever the burst's size.
    """
    ts = pd.DatetimeIndex(alerts["ts"]).as_unit("ns").asi8
    order = np.argsort(ts, kind="stable")
    burst = np.empty(len(ts), dtype=int)
    burst[order] = np.concatenate([[0], np.cumsum(np.diff(ts[order]) > pd.Timedelta(within).value)])
    pairs = pd.DataFrame({"burst": burst, "feature": alerts["feature_name"].to_numpy()})
    pair = pairs.groupby(["burst", "feature"], sort=False).ngroup().to_numpy()
    distinct = pairs.drop_duplicates()                  # in ngroup's order (first appearance)
    features = distinct["feature"].to_numpy()
    above = {f: [feature_node(graph, f), *nx.ancestors(graph, feature_node(graph, f))]
             for f in pd.unique(features)}
    sizes = np.fromiter((len(above[f]) for f in features), dtype=int, count=len(features))
    members = pd.DataFrame({          # (burst, feature) pair -> each node at or above it
        "burst": np.repeat(distinct["burst"].to_numpy(), sizes),
        "node": np.concatenate([above[f] for f in features])})
    node = members.groupby(["burst", "node"], sort=False).ngroup().to_numpy()
    member_of = np.repeat(np.arange(len(distinct)), sizes)
    # connected components of the pair-node graph by min-label propagation (rounds ~ diameter)
    label = np.arange(len(distinct))
    while True:
        node_label = np.full(node.max() + 1, len(distinct))
        np.minimum.at(node_label, node, label[member_of])
        relabelled = label.copy()
        np.minimum.at(relabelled, member_of, node_label[node])
        if np.array_equal(relabelled, label):
            break
        label = relabelled
    raw = label[pair]
    first = pd.Series(ts).groupby(raw).min().sort_values(kind="stable")
    return pd.Series(np.arange(len(first)), index=first.index)[raw].to_numpy()


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
