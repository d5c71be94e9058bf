"""Joining lineage tables from several sources: the lake's own, and others (OpenLineage events).

A lake's lineage may be incomplete: pipelines outside the platform report
theirs as OpenLineage events. Readers join such sources into the contract's
lineage tables (:meth:`~hawkeye_dagster.lake.reader.TelemetryReader.with_lineage`),
so every analysis sees one graph.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

#: the contract's lineage tables that other sources may add rows to
LINEAGE_TABLES = ("lineage_nodes", "lineage_edges", "lineage_changes", "pipelines")
#: what :func:`merge_lineage` unions, and the columns that identify a row (``None``: all)
MERGE_KEYS = {"lineage_nodes": ["node_id"], "lineage_edges": ["upstream_id", "downstream_id"],
              "pipelines": ["pipeline_id"], "lineage_changes": None, "lineage_column_edges": None}


def merge_lineage(*sources: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Union lineage tables from several sources (the lake's first).

    A node, edge or pipeline known to several sources keeps the first source's row.
    """
    merged = {}
    for table, key in MERGE_KEYS.items():
        frames = [s[table] for s in sources if s.get(table) is not None and len(s[table])]
        if frames:
            merged[table] = pd.concat(frames, ignore_index=True).drop_duplicates(
                key, ignore_index=True)
    return merged
