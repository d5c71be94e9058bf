"""Which pipelines to pause for an upstream root cause, and whether policy lets it happen."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx
import pandas as pd

from hawkeye_dagster.analysis.lineage_graph import feature_node, node_attributes

PLAN_COLUMNS = ("pipeline_id", "orchestrator", "target", "nodes")


@dataclass(frozen=True)
class PausePlan:
    """The pipelines producing the bad node and every node it feeds on the way to the features.

    ``pipelines`` has :data:`PLAN_COLUMNS`, one row per pipeline, the one that
    produces the cause node first, then by distance down from it; ``nodes``
    lists the affected nodes the pipeline produces.
    """

    incident: str
    cause_node: str
    confidence: float
    pipelines: pd.DataFrame


@dataclass(frozen=True)
class PausePolicy:
    """Guard rails: pausing happens for real only when every one of them allows it.

    ``dry_run`` (the default) records what would be paused and touches
    nothing; ``min_confidence`` and ``max_pipelines`` refuse weak or sweeping
    plans; ``auto`` says whether an incident may trigger the pause without a
    person launching it.
    """

    dry_run: bool = True
    auto: bool = False
    min_confidence: float = 0.8
    max_pipelines: int = 3


def plan_pause(graph: nx.DiGraph, cause_node: str, features: Iterable[str], *, incident: str,
               confidence: float) -> PausePlan:
    """Plan the pause for a root cause at ``cause_node`` that reached ``features``.

    The affected nodes are the cause itself and its descendants that are also
    ancestors of (or are) the features' nodes: nothing off the path from the
    cause to the features is ever in the plan.
    """
    if cause_node not in graph:
        raise KeyError(f"lineage node {cause_node!r} is not in the lineage graph")
    targets = {feature_node(graph, f) for f in features}
    on_path = {cause_node}.union(targets, *(nx.ancestors(graph, t) for t in targets))
    distance = nx.single_source_shortest_path_length(graph, cause_node)
    affected = pd.Series({n: d for n, d in distance.items() if n in on_path},
                         name="distance", dtype=int)
    attrs = node_attributes(graph).loc[affected.index].assign(distance=affected)
    attrs = attrs.dropna(subset=["pipeline_id"]).rename_axis("node_id").reset_index()
    pipelines = (attrs.sort_values(["distance", "node_id"])
                 .groupby("pipeline_id", sort=False)
                 .agg(orchestrator=("orchestrator", "first"), target=("target", "first"),
                      nodes=("node_id", tuple))
                 .reset_index())
    return PausePlan(incident, cause_node, float(confidence), pipelines[list(PLAN_COLUMNS)])


def refusal(plan: PausePlan, policy: PausePolicy, *, automatic: bool) -> str | None:
    """Why the plan may not be carried out for real (``None`` when it may)."""
    if policy.dry_run:
        return "dry run: nothing paused"
    if automatic and not policy.auto:
        return "automatic pausing is not enabled"
    if plan.confidence < policy.min_confidence:
        return f"confidence {plan.confidence:.2f} is below {policy.min_confidence:.2f}"
    if len(plan.pipelines) > policy.max_pipelines:
        return f"{len(plan.pipelines)} pipelines exceed the maximum of {policy.max_pipelines}"
    return None
