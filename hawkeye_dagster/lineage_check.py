"""The lineage tables' structural rules: edges name known nodes, and the edges form no cycle.

Pure (pandas and numpy; scipy's graph routines loaded lazily), below the lake, so that lake
validation (:mod:`hawkeye_dagster.lake.validate`) and the graph build
(:mod:`hawkeye_dagster.analysis.lineage_graph`) apply the same rules in the same way.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd

from hawkeye_dagster.errors import ContractError, LineageCycleError

_EXAMPLES = 3


def checked_edges(nodes: pd.DataFrame,
                  edges: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """The distinct node ids and each distinct edge's (upstream, downstream) positions in them.

    Raises :class:`~hawkeye_dagster.errors.ContractError` for an edge naming a node missing
    from ``nodes``, :class:`~hawkeye_dagster.errors.LineageCycleError` naming one cycle when
    the edges form any. Time and memory are linear in nodes + edges.
    """
    nodes = nodes.drop_duplicates("node_id")
    edges = edges[["upstream_id", "downstream_id"]].drop_duplicates()
    node_ids = pd.Index(nodes["node_id"])
    up, down = (node_codes(edges[c], node_ids, table="lineage_edges", column=c)
                for c in ("upstream_id", "downstream_id"))
    check_acyclic(node_ids, up, down)
    return node_ids, up, down


def node_codes(ids: pd.Series, known: pd.Index, *, table: str, column: str) -> np.ndarray:
    """Positions of ``ids`` in ``known``; any id not there is bad input, named with examples."""
    codes = known.get_indexer(ids)
    if (codes < 0).any():
        unknown = ids[codes < 0].unique()
        examples = ", ".join(repr(u) for u in unknown[:_EXAMPLES])
        raise ContractError(f"{len(unknown)} id(s) not in lineage_nodes.node_id, e.g. {examples}",
                            table=table, column=column)
    return codes


def check_acyclic(node_ids: pd.Index, upstream: np.ndarray, downstream: np.ndarray) -> None:
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
