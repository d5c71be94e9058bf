"""Counterfactual confirmation of a report's root causes: how much of the incident each
cause's repair removes.

After the decision tree has named its root causes, each becomes a repair of
the degradation window's logged served rows of the suspect model (the
features below a lineage node mapped onto their pre-onset distribution, a
rollback to the last stable snapshot, a re-score without a training
partition, the pre-ramp traffic fractions), measured by
:func:`~hawkeye_dagster.analysis.counterfactual.counterfactuals`. Each root
cause then carries ``explained_share`` and ``counterfactual``, its summary
leads with the share, and a cause whose repair explains almost nothing of a
real degradation that another cause's repair explains is demoted (its
confidence scaled down, which can turn ``root_cause_found`` into
``inconclusive``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.counterfactual import (Candidate, Counterfactual, ServedRows,
                                                     counterfactuals)
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage.report import iso

if TYPE_CHECKING:
    from hawkeye_dagster.triage.tree import TriageRun

#: at most this many rows on each side (window, pre-onset), drawn at random
MAX_ROWS = 20_000
#: pre-onset history the repairs map onto
PRE_ONSET = pd.Timedelta("7D")
#: a cause whose share's upper bound is below this explains almost nothing: demoted, where
#: another candidate's repair explains the degradation
DEMOTE_SHARE = 0.2
#: a repair that removes at least this share explains the degradation (the larger part of it)
EXPLAINS = 0.5
#: two causes explaining at least this share each, together most, are a compound incident
COMPOUND_SHARE = 0.25


def confirm_root_causes(run: TriageRun) -> list[Counterfactual]:
    """Measure and record every root cause's counterfactual; returns them (for the plots)."""
    causes = run.report.root_causes
    model_id = _model(run)
    if not causes or model_id is None or not run.data.reader.has_table("serving_samples"):
        return []  # nothing served to re-run (a lineage-only lake)
    onset, end = _degradation(run, model_id)
    run.progress(f"counterfactuals: repairing {len(causes)} root causes of {model_id}")
    features = run.data.model_features(model_id)
    rows = run.data.serving_inputs(model_id, TimeRange(onset - PRE_ONSET, end))
    if run.evidence.series is not None:
        rows = rows[rows["segment"] == run.evidence.series[1]]
    after = (rows["ts"] >= onset).to_numpy()
    window, reference = _sample(rows[after]), _sample(rows[~after])
    if len(window) < 2 or len(reference) < 2:
        return []
    snapshots = run.data.snapshots[run.data.snapshots["model_id"] == model_id]
    kept, candidates = [], []
    ids = sorted(set(rows["snapshot_id"]))
    for cause in causes:
        candidate = _candidate(run, cause, model_id, features, snapshots, ids)
        if candidate is not None:
            kept.append(cause)
            candidates.append(candidate)
    if not candidates:
        return []
    code = {s: i for i, s in enumerate(ids)}
    models = [_module(run, snapshots, s) for s in ids]
    results = counterfactuals(_served(window, features, code), _served(reference, features, code),
                              candidates, models, run.data.task(model_id))
    for cause, result in zip(kept, results):
        rivals = [r.explained_share for r in results if r is not result]
        record(cause, result, model_id, onset,
               explained_elsewhere=max(rivals, default=0.0) >= EXPLAINS)
    _step(run, results, model_id, onset)
    run.evidence.counterfactuals = results
    return results


def _model(run: TriageRun) -> str | None:
    if run.evidence.model_id is not None:
        return run.evidence.model_id
    models = run.report.suspects["models"]
    return models[0] if models else None


def _degradation(run: TriageRun, model_id: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Onset and end of the degradation: the tree's, else the entry snapshot's publication."""
    onset = run.evidence.onset
    if onset is None and run.report.entry.get("snapshot"):
        onset = run.data.snapshots.set_index("snapshot_id").loc[run.report.entry["snapshot"],
                                                                "published_at"]
    return (pd.Timestamp(run.data.window.start if onset is None else onset),
            pd.Timestamp(run.evidence.end or run.data.window.end))


def _sample(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sample(MAX_ROWS, random_state=0).sort_values("ts") if len(rows) > MAX_ROWS \
        else rows


def _served(rows: pd.DataFrame, features: list[str], code: dict[str, int]) -> ServedRows:
    return ServedRows(rows[features].to_numpy(np.float32, na_value=np.nan),
                      rows["prediction"].to_numpy(float),
                      rows["label"].to_numpy(float, na_value=np.nan),
                      rows["snapshot_id"].map(code).to_numpy(np.int64), rows["ts"].to_numpy())


def _module(run: TriageRun, snapshots: pd.DataFrame, snapshot_id: str):
    from hawkeye_dagster.snapshot_io import load_artifact

    artifact = snapshots.set_index("snapshot_id").loc[snapshot_id, "artifact"]
    return load_artifact(run.data.reader, artifact, snapshot_id=snapshot_id).module()


def _candidate(run: TriageRun, cause: dict, model_id: str, features: list[str],
               snapshots: pd.DataFrame, ids: list[str]) -> Candidate | None:
    """A root cause as a repair; ``ids`` (the serving snapshots) grows by re-scoring ones."""
    kind, id = cause["kind"], cause["id"]

    def code(snapshot: str) -> int:
        if snapshot not in ids:
            ids.append(snapshot)
        return ids.index(snapshot)

    if kind in ("lineage_node", "lineage_change", "feature"):
        below = _features_below(run, id) if kind != "feature" else [id]
        cols = tuple(features.index(f) for f in features if f in below)
        return Candidate(kind, id, f"{len(cols)} features of {model_id} reached by {id} mapped "
                                   "onto their pre-onset distribution (same hours), rows "
                                   "re-weighted to it, re-scored by their serving snapshot",
                         features=cols) if cols else None
    if kind == "snapshot":
        target = _rollback_target(run, model_id)
        return None if target is None or target == id else Candidate(
            kind, id, f"re-scored with the rollback target {target}",
            rescore={code(id): code(target)})
    if kind == "training_partition":
        read, target = _without_partition(run, snapshots, id)
        served = [s for s in list(ids) if s in read]
        return None if target is None or not served else Candidate(
            kind, id, f"re-scored with {target}, the latest snapshot whose training did not "
                      f"read {id}", rescore={code(s): code(target) for s in served})
    if kind == "traffic" and run.evidence.rollout is not None:
        before = run.evidence.rollout.snapshots.set_index("snapshot_id")["share_before"]
        return Candidate(kind, id, "served rows re-weighted to the traffic fractions before the "
                                   "ramp", traffic={ids.index(s): float(f)
                                                    for s, f in before.items() if s in ids})
    return None


def _features_below(run: TriageRun, node: str) -> set[str]:
    import networkx as nx

    from hawkeye_dagster.gather.lineage import lineage_from_reader

    graph = lineage_from_reader(run.data.reader)
    if node not in graph:
        return set()
    below = nx.descendants(graph, node) | {node}
    return {f for f, n in graph.graph["feature_nodes"].items() if n in below}


def _rollback_target(run: TriageRun, model_id: str) -> str | None:
    rollback = [m["to_snapshot_id"] for m in run.report.mitigations
                if m["action"] == "rollback_snapshot" and m["model_id"] == model_id]
    rollout = run.evidence.rollout
    return rollback[0] if rollback else (rollout.previous_snapshot if rollout else None)


def _without_partition(run: TriageRun, snapshots: pd.DataFrame,
                       key: str) -> tuple[set[str], str | None]:
    """The model's snapshots whose training read partition ``key`` (``dataset/partition``),
    and the latest published one whose training did not."""
    from hawkeye_dagster.analysis.training_diagnosis import split_partition_key

    dataset, partition = split_partition_key(key)
    runs = run.data.table("training_runs")
    reading = runs[(runs["dataset_id"] == dataset)
                   & runs["partitions"].map(lambda p: partition in list(p))]["training_run_id"]
    read = snapshots["training_run_id"].isin(set(reading))
    others = snapshots[~read & (snapshots["published_at"] < run.data.window.end)]
    target = others.sort_values("published_at")["snapshot_id"].iloc[-1] if len(others) else None
    return set(snapshots.loc[read, "snapshot_id"]), target


def record(cause: dict, result: Counterfactual, model_id: str, onset: pd.Timestamp, *,
           explained_elsewhere: bool) -> None:
    """The share into the cause: its fields, its summary's lead, and a demotion if it explains
    almost nothing of a real degradation that another candidate's repair does explain.

    A repair is a model of the fix (quantile mapping cannot undo every corruption, and the
    onset it starts from may be a coarse bucket's), so where no candidate's repair explains the
    degradation the measurement says more about the repairs than about the causes: the
    summary says so and the confidence stands.
    """
    low, high = result.interval
    cause["explained_share"] = round(result.explained_share, 3)
    cause["counterfactual"] = result.to_json()
    rise = f"{model_id}'s {result.metric.replace('_', ' ')} rise since {iso(onset)}"
    if not result.degraded:
        cause["summary"] = f"no measurable {rise.replace(' rise', ' change')}; " + cause["summary"]
        return
    lead = f"repairing it removes {result.explained_share:.0%} ({low:.0%}-{high:.0%}) of {rise}"
    if high < DEMOTE_SHARE and explained_elsewhere:
        cause["confidence"] = round(cause["confidence"] * (0.5 + 0.5 * high / DEMOTE_SHARE), 3)
        lead += " (demoted: its repair explains almost none of it, another's explains it)"
    elif high < DEMOTE_SHARE:
        lead += " (no candidate's repair explains the rise: confidence kept)"
    cause["summary"] = f"{lead}; {cause['summary']}"


def _compound(shares: list[tuple[Candidate, float]]) -> tuple[Candidate, Candidate] | None:
    """Two causes with separate repairs (no shared feature, not the same re-score) that each
    explain at least :data:`COMPOUND_SHARE`, together most of the degradation. Causes on one
    lineage path repair the same features, and two features below one cause are its parts:
    one cause, not two."""
    large = [(c, s) for c, s in shares if s >= COMPOUND_SHARE]
    for i, (a, sa) in enumerate(large):
        for b, sb in large[i + 1:]:
            separate = (not set(a.features) & set(b.features)
                        and not set(a.rescore) & set(b.rescore) and not (a.traffic and b.traffic))
            union = set(a.features) | set(b.features)
            parts = any(union <= set(c.features) for c, _ in shares if c not in (a, b))
            if separate and not parts and sa + sb >= 0.6:
                return a, b
    return None


def _step(run: TriageRun, results: list[Counterfactual], model_id: str,
          onset: pd.Timestamp) -> None:
    shares = [(r.candidate, r.explained_share) for r in results]
    parts = ", ".join(f"{c.kind} {c.id}: {s:.0%}" for c, s in shares)
    finding = f"counterfactual re-runs of {model_id} since {iso(onset)}: {parts}"
    pair = _compound(shares)
    if pair:
        finding += (f"; a compound incident: {pair[0].kind} {pair[0].id} and {pair[1].kind} "
                    f"{pair[1].id} each explain part of it")
    if not results[0].degraded:
        finding += f"; {results[0].metric} did not degrade measurably, nothing to explain"
    run.report.step("counterfactual", finding,
                    counterfactuals=[{"kind": r.candidate.kind, "id": r.candidate.id,
                                      "explained_share": r.explained_share,
                                      **r.to_json()} for r in results])
