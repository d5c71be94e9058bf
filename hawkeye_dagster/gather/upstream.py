"""Upstream root-cause analysis over a lake: read the bad features' ancestors, then analyse.

:func:`upstream_from_reader` reads only the statistics and changes that
:func:`~hawkeye_dagster.analysis.upstream_rca.upstream_root_cause` needs, filters pushed
down to the lake.
"""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx
import pandas as pd

from hawkeye_dagster.analysis.changepoints import pivot_by_cadence, series_cadence
from hawkeye_dagster.analysis.lineage_graph import feature_node
from hawkeye_dagster.analysis.upstream_rca import (UpstreamAnalysis, UpstreamSettings,
                                                   upstream_root_cause)
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.time_range import as_utc


def upstream_from_reader(
    reader: TelemetryReader,
    graph: nx.DiGraph,
    bad_features: Mapping[str, pd.Timestamp],
    settings: UpstreamSettings = UpstreamSettings(),
) -> UpstreamAnalysis:
    """:func:`upstream_root_cause` reading only what it needs from a lake.

    Statistics and changes of the bad features' ancestors, in the scanned
    window and its baseline (filters pushed down to the lake).
    """
    nodes = {feature_node(graph, f) for f in bad_features}
    ancestors = sorted(nodes.union(*(nx.ancestors(graph, n) for n in nodes)))
    onsets = [as_utc(t) for t in bad_features.values()]
    span = settings.span(onsets)
    stats = reader.read("lineage_node_stats", time_range=span, isin={"node_id": ancestors})
    if len(stats):  # coarser statistics need longer windows: read those once more
        wider = settings.for_cadence(series_cadence(stats).max()).span(onsets)
        if wider.start < span.start or wider.end > span.end:
            stats = reader.read("lineage_node_stats", time_range=wider,
                                isin={"node_id": ancestors})
    changes = reader.read("lineage_changes", isin={"node_id": ancestors})
    return upstream_root_cause(graph, bad_features, pivot_by_cadence(stats), changes, settings)
