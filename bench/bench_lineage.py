"""Lineage benchmarks: graph build at three sizes and one incident's upstream analysis at 100k
nodes (the feature-alert sensor's tick is in :mod:`bench.bench_sensors`).

- ``lineage_graph_build``: :func:`build_lineage_graph` (reference checks,
  cycle check, attributes) against the floor of a bare
  ``networkx.DiGraph(edges)``; three sizes show that time grows linearly.
- ``upstream_rca_100k``: :func:`upstream_root_cause` for one incident (three
  bad features below one corrupted source) on a layered lineage graph of
  100,000 nodes / 300,000 edges with a year of daily statistics (3 per node),
  against the straightforward version: ``networkx.ancestors`` of the features,
  then one vectorized pandas pass (median/MAD z-scores of every ancestor's
  statistics, the largest 3-day run); both best of three.
"""

from __future__ import annotations


import networkx as nx
import numpy as np
import pandas as pd

from bench.timing import best_of
from hawkeye_dagster.analysis.lineage_graph import build_lineage_graph
from hawkeye_dagster.analysis.upstream_rca import UpstreamSettings, upstream_root_cause

STATS = ("row_count", "null_fraction", "mean")
#: daily statistics: scan six weeks around the onset against the half year before
DAILY = UpstreamSettings(lead=pd.Timedelta(days=28), lag=pd.Timedelta(days=14),
                         baseline=pd.Timedelta(days=180))
#: layer sizes as fractions of the node count: sources, raw tables, tables, transforms, features
LAYERS = (0.1, 0.2, 0.2, 0.2, 0.3)
KINDS = ("source", "table", "table", "transform", "feature")


def lineage_tables(n_nodes: int, n_edges: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A layered lineage graph: each node reads from the layer above, mostly from nearby nodes
    (80%) and sometimes from anywhere (20%, the shared hub tables of a real warehouse)."""
    rng = np.random.default_rng(seed)
    sizes = (np.array(LAYERS) * n_nodes).astype(int)
    sizes[-1] = n_nodes - sizes[:-1].sum()
    starts = np.concatenate([[0], np.cumsum(sizes)])
    ids = np.array([f"n{i}" for i in range(n_nodes)], dtype=object)
    kinds = np.repeat(KINDS, sizes)
    per_node = n_edges / (n_nodes - sizes[0])
    ups, downs = [], []
    for layer in range(1, len(sizes)):
        children = np.arange(starts[layer], starts[layer + 1])
        fan_in = rng.poisson(per_node - 1, len(children)) + 1
        child = np.repeat(children, fan_in)
        position = (child - starts[layer]) / sizes[layer]
        local = starts[layer - 1] + (position * sizes[layer - 1]
                                     + rng.integers(-20, 21, len(child))) % sizes[layer - 1]
        anywhere = rng.integers(starts[layer - 1], starts[layer], len(child))
        ups.append(np.where(rng.random(len(child)) < 0.8, local, anywhere).astype(int))
        downs.append(child)
    up, down = np.concatenate(ups), np.concatenate(downs)
    edges = pd.DataFrame({"upstream_id": ids[up], "downstream_id": ids[down]}).drop_duplicates()
    features = ids[starts[-2]:]
    return {
        "lineage_nodes": pd.DataFrame({"node_id": ids, "kind": kinds,
                                       "pipeline_id": [f"p{i // 10}" for i in range(n_nodes)]}),
        "lineage_edges": edges,
        "features": pd.DataFrame({"feature_name": [f"feature {f}" for f in features],
                                  "lineage_node_id": features}),
    }


def daily_stats(node_ids: np.ndarray, days: int, seed: int = 0) -> pd.DataFrame:
    """A year (``days``) of daily statistics, wide ``[day x (node, stat)]`` float32, with noise."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2025-01-01", periods=days, freq="D", tz="UTC", name="ts")
    columns = pd.MultiIndex.from_product([node_ids, STATS], names=["node_id", "stat"])
    level = np.tile(np.array([1000.0, 0.01, 5.0], dtype=np.float32), len(node_ids))
    values = level * (1 + 0.02 * rng.standard_normal((days, len(columns)), dtype=np.float32))
    return pd.DataFrame(values, index=times, columns=columns, copy=False)


def with_incident(graph: nx.DiGraph, wide: pd.DataFrame, onset_day: int,
                  rng) -> tuple[pd.DataFrame, str, dict]:
    """Corrupt one source's null fraction (and, diluted, everything below it); three bad features."""
    sources = [n for n, k in graph.nodes(data="kind") if k == "source"]
    for source in rng.permutation(sources):
        below = nx.descendants(graph, source)
        features = sorted(n for n in below if graph.nodes[n]["kind"] == "feature")
        if len(features) >= 3:
            break
    cols = wide.columns.get_indexer([(source, "null_fraction")]
                                    + [(n, "null_fraction") for n in below])
    values = wide.to_numpy().copy()
    values[onset_day:, cols[0]] = 0.4
    values[onset_day:, cols[1:]] = 0.2
    onset = wide.index[onset_day]
    bad = {graph.nodes[f]["features"][0]: onset for f in features[:3]}
    return pd.DataFrame(values, index=wide.index, columns=wide.columns, copy=False), source, bad


def reference_upstream(graph: nx.DiGraph, bad: dict, wide: pd.DataFrame,
                       onset: pd.Timestamp) -> str:
    """The straightforward version: the features' ancestors (networkx), then one vectorized
    pandas pass over all their statistics: median/MAD z-scores against the baseline
    window, the largest 3-day run; the node with the highest score."""
    ancestors = set().union(*(nx.ancestors(graph, graph.graph["feature_nodes"][f]) for f in bad))
    block = wide.loc[:, wide.columns.get_level_values("node_id").isin(ancestors)]
    after = block.index >= onset - DAILY.lead
    before = ~after & (block.index >= onset - DAILY.lead - DAILY.baseline)
    reference = block[before]
    median = reference.median()
    mad = (reference - median).abs().median()
    z = ((block[after] - median) / (1.4826 * mad)).abs()
    return z.rolling(3).min().max().idxmax()[0]


def bench_build(sizes) -> list[dict]:
    results = []
    for n_nodes in sizes:
        tables = lineage_tables(n_nodes, 3 * n_nodes)
        edges = tables["lineage_edges"]
        project_s, _ = best_of(lambda: build_lineage_graph(
            tables["lineage_nodes"], edges, tables["features"]))
        reference_s, _ = best_of(lambda: nx.DiGraph(zip(edges["upstream_id"], edges["downstream_id"])))
        results.append({
            "name": f"lineage_graph_build_{n_nodes // 1000}k",
            "project_s": project_s, "reference": "floor: bare nx.DiGraph(edges)",
            "reference_s": reference_s, "ratio": reference_s / project_s,
            "params": {"nodes": n_nodes, "edges": len(edges),
                       "us_per_edge": 1e6 * project_s / len(edges)},
        })
    return results


def bench_upstream(n_nodes: int, days: int) -> dict:
    rng = np.random.default_rng(1)
    tables = lineage_tables(n_nodes, 3 * n_nodes)
    graph = build_lineage_graph(tables["lineage_nodes"], tables["lineage_edges"], tables["features"])
    clean = daily_stats(tables["lineage_nodes"]["node_id"].to_numpy(), days)
    wide, source, bad = with_incident(graph, clean, days - 40, rng)
    del clean
    onset = next(iter(bad.values()))

    project_s, analysis = best_of(lambda: upstream_root_cause(graph, bad, wide, settings=DAILY))
    top = analysis.candidates.iloc[0]
    assert top["id"] == source, f"upstream analysis blamed {top['id']}, not {source}"
    reference_s, found = best_of(lambda: reference_upstream(graph, bad, wide, onset))
    floor_s, ancestors = best_of(lambda: set().union(*(
        nx.ancestors(graph, graph.graph["feature_nodes"][f]) for f in bad)))
    return {
        "name": f"upstream_rca_{n_nodes // 1000}k",
        "project_s": project_s,
        "reference": "nx.ancestors + one vectorized pandas median/MAD z-score pass",
        "reference_s": reference_s, "ratio": reference_s / project_s,
        "params": {"nodes": n_nodes, "edges": graph.number_of_edges(), "days": days,
                   "ancestors": len(ancestors), "bad_features": len(bad),
                   "floor_nx_ancestors_s": floor_s, "reference_found_source": found == source,
                   "top_confidence": round(float(top["confidence"]), 3)},
    }


def run(quick: bool) -> list[dict]:
    sizes = (5_000, 10_000, 20_000) if quick else (25_000, 50_000, 100_000)
    return [*bench_build(sizes), bench_upstream(20_000 if quick else 100_000, 365)]


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
