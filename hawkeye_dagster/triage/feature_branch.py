"""The feature branch: which features moved, and where upstream their data broke.

Entered when every snapshot of a suspect model degraded alike (the
features are the suspects), or directly from a feature health alert. The
ranked features' onsets feed the upstream root-cause analysis, whose
candidates (a node's bad data, a deployed change, or the feature itself)
become the report's root causes, with the pipeline to pause.
"""

from __future__ import annotations

import pandas as pd

from hawkeye_dagster.triage import calibration
from hawkeye_dagster.triage.branch import Findings, TriageContext, Visit, branch
from hawkeye_dagster.triage.report import iso

#: at most this many ranked features are traced upstream
MAX_FEATURES = 5
#: at most this many upstream candidates become root causes
MAX_CAUSES = 3
#: a feature shift this significant (the ranking's combined p-value) counts without a
#: prediction shift
SHIFT_P = 1e-6


@branch("model_to_features", "features", calibration=calibration.ROOT_CAUSES)
def from_model(context: TriageContext, visit: Visit, found: Findings) -> None:
    """Features of a degraded model that explain its degradation, then their upstream cause.

    The ranking's ``significant`` features need the prediction distribution
    to have moved; a model whose loss rose (labels say so, upstream in the
    tree) can degrade without that, e.g. when null-filled inputs flatten its
    scores. Then the features that shifted significantly (``p_value <
    SHIFT_P``) stand in, by score.
    """
    from hawkeye_dagster.gather.feature_ranking import rank_features

    model_id, onset, end = visit["model_id"], visit["onset"], visit["end"]
    context.progress(f"features: ranking the inputs of {model_id}")
    ranking = rank_features(context.data.reader, model_id, onset=onset, end=end,
                            window=context.data.span)
    found.note(features=ranking)
    chosen = ranking[ranking["significant"]]
    how = "moved with its predictions"
    if chosen.empty:
        chosen = ranking[ranking["p_value"] < SHIFT_P].sort_values("score", ascending=False)
        how = "shifted while its predictions degraded"
    chosen = chosen.head(MAX_FEATURES)
    if chosen.empty:
        found.step("model_to_features",
                   f"no input feature of {model_id} explains its degradation "
                   f"({ranking.attrs.get('summary', '')})",
                   features=ranking.head(10).to_dict("records"))
        found.conclude("inconclusive")
        return
    found.suspect("features", chosen["feature"])
    top = chosen.iloc[0]
    found.step("model_to_features",
               f"{len(chosen)} features of {model_id} {how}; first {top['feature']!r}: "
               f"{top['reasons']}", features=chosen.to_dict("records"))
    found.follow("upstream", onsets={row.feature: (row.onset if pd.notna(row.onset) else onset)
                                     for row in chosen.itertuples()})


@branch("feature_alert", "feature_alert", calibration=calibration.ROOT_CAUSES)
def from_feature_alert(context: TriageContext, visit: Visit, found: Findings) -> None:
    """Entry from a feature health alert: trace the alerted ``features`` upstream from when it
    fired.

    ``onsets`` (feature -> alert time) default to each feature's first alert
    in the window in ``feature_alerts``, else the window's end.
    """
    features, given = visit["features"], visit.get("onsets") or {}
    window = context.data.window
    alerts = context.data.table("feature_alerts", time_range=window)
    alerts = alerts[alerts["feature_name"].isin(features)]
    fired = alerts.groupby("feature_name")["ts"].min()
    onsets = {f: pd.Timestamp(given.get(f) or fired.get(f, window.end)) for f in features}
    found.note(onset=context.evidence.onset or min(onsets.values()))
    found.suspect("features", features)
    found.step("feature_alert", "alerts on " + ", ".join(
        f"{f!r} at {iso(t)}" for f, t in onsets.items()), alerts=alerts.to_dict("records"))
    found.follow("upstream", onsets=onsets)


@branch("features_to_upstream", "upstream", calibration=calibration.ROOT_CAUSES)
def upstream(context: TriageContext, visit: Visit, found: Findings) -> None:
    """Walk the lineage graph above the bad features (``onsets``: feature -> onset) and name
    the root causes."""
    from hawkeye_dagster.gather.lineage import lineage_from_reader
    from hawkeye_dagster.gather.upstream import upstream_from_reader

    bad_features, reader = visit["onsets"], context.data.reader
    context.progress(f"lineage: walking upstream of {len(bad_features)} features")
    graph = lineage_from_reader(reader)
    analysis = upstream_from_reader(reader, graph, bad_features)
    candidates = analysis.candidates
    found.step("features_to_upstream", analysis.finding(),
               candidates=candidates.head(MAX_CAUSES).to_dict("records"), paths=analysis.paths)
    found.suspect("lineage_nodes", candidates.loc[candidates["kind"] != "feature", "node_id"])
    top = candidates.iloc[0] if len(candidates) else None
    if top is None or (top["kind"] == "feature" and not bool(top["moved"])):
        found.step("verdict", "nothing above the features moved, nor their own data: the alert "
                              "is not an incident")
        found.conclude("no_issue")
        return
    for row in candidates.head(MAX_CAUSES).itertuples():
        found.root_cause(row.kind, row.id, evidence=row.confidence, summary=row.summary,
                         version=row.version if row.kind == "lineage_change" else None)
    found.note(lineage_path=next(iter(analysis.paths.get(top["id"], {}).values()), []))
    if pd.notna(top["onset"]):  # an upstream move can precede the alerts and the top line
        onset = context.evidence.onset
        found.note(onset=min(onset or top["onset"], top["onset"]))
    if top["kind"] == "feature":
        for model_id in _consumers(context.data, top["id"]):
            found.mitigate({"action": "add_guard", "model_id": model_id, "node": top["id"],
                            "guard": "clip"})
    else:
        pipeline = graph.nodes[top["node_id"]].get("pipeline_id")
        if pipeline:
            found.mitigate({"action": "pause_pipeline", "pipeline_id": pipeline})
        found.suspect("models", _exposed_models(context.data, graph, top["node_id"]))
    found.conclude("root_cause_found")


def _exposed_models(data, graph, node: str) -> list[str]:
    """Models reading any feature at or below ``node``, those reading the most first."""
    import networkx as nx

    below = nx.descendants(graph, node) | {node}
    features = [f for f, n in graph.graph["feature_nodes"].items() if n in below]
    rows = data.table("model_features", isin={"feature_name": features})
    counts = rows.groupby("model_id").size().reset_index(name="n")
    return counts.sort_values(["n", "model_id"], ascending=[False, True])["model_id"].tolist()


def _consumers(data, feature: str) -> list[str]:
    rows = data.table("model_features", equals={"feature_name": feature})
    return sorted(rows["model_id"].unique())


BRANCHES = (from_model, from_feature_alert, upstream)
