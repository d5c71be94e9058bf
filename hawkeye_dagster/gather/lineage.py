"""The lineage graph of a lake: its lineage tables, OpenLineage events joined, as a graph."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from hawkeye_dagster.analysis.lineage_graph import build_lineage_graph
from hawkeye_dagster.lake.reader import TelemetryReader


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
