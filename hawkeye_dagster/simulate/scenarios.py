"""Scenarios: which incidents happen when, and the ground truth each one leaves.

A scenario builds a :class:`Plan`: data effects at lineage nodes, defective
snapshot releases, lineage changes, training-data defects and alerts. Each
incident also registers a function that writes its ground-truth entry once
the simulation has run (some answers, like the step where a loss exploded or
when an alert fired, are read off what really happened).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from hawkeye_dagster.simulate.requests import DAY, HOUR, START, DemandDip, NodeEffect
from hawkeye_dagster.simulate.rollout import DEFAULT_RAMP, Release
from hawkeye_dagster.simulate.training import EXPLODING_LR, NAN_LOG_SHIFT, UNDERFIT
from hawkeye_dagster.simulate.world import World

SCENARIOS = (
    "demo",
    "upstream_corruption",
    "transform_change",
    "bad_training_partition",
    "exploding_training",
    "nan_snapshot",
    "traffic_ramp",
    "feature_alert_early",
    "clean",
)

BASELINE = 3 * DAY
DRIFT_PER_DAY = 0.4
"""Drift of a source's values, in its own units (its values' spread is about 1.5)."""
"""How much clean history before an onset a truth window includes."""


def _minute(t: float) -> float:
    """Incidents start on whole minutes."""
    return float(np.round(t / 60.0) * 60.0)


def iso(t: float) -> str:
    """Seconds since the timeline start as an ISO-8601 UTC string."""
    return str(START + np.timedelta64(int(round(t)), "s")) + "Z"


@dataclass(frozen=True)
class LineageChange:
    ts: float
    node_id: str
    change_type: str
    version: str
    description: str


@dataclass(frozen=True)
class Alert:
    ts: float
    feature_name: str
    alert_type: str
    severity: str
    detail: str


@dataclass(frozen=True)
class AlertRule:
    """A monitor on one feature's hourly stat that fires when it leaves its recent range."""

    feature: str
    stat: str  # "mean" or "null_fraction"
    start: float
    severity: str


@dataclass
class Outcome:
    """What happened, as far as ground truth needs it."""

    end: float
    releases: dict[str, Release]
    #: snapshot -> (loss per step, grad norm per step)
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    #: snapshot -> name of the ``log`` node in its exported graph
    log_node: dict[str, str]
    #: snapshot -> share of its served predictions that were NaN
    nan_fraction: dict[str, float]
    #: alerts fired by the plan's rules
    fired: dict[AlertRule, Alert]


@dataclass(frozen=True)
class Site:
    """Where an incident strikes, for the mess factors (:mod:`.factors`) to place decoys near.

    ``node``: the lineage node whose data broke (``None`` for a snapshot incident);
    ``models``: the models it reaches, the entry's model first; ``onset``: seconds.
    """

    node: str | None
    models: tuple[str, ...]
    onset: float


@dataclass
class Plan:
    days: int
    #: effect size of the incidents (1: the scenarios' own; the ``weak`` factor lowers it)
    strength: float = 1.0
    effects: list[NodeEffect] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    #: model -> intervals (seconds) with no regular retrain
    frozen: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    changes: list[LineageChange] = field(default_factory=list)
    #: (model, day) training partitions whose labels a join bug inverted
    flipped_labels: set[tuple[str, int]] = field(default_factory=set)
    alert_rules: list[AlertRule] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    truths: list[Callable[[Outcome], dict]] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    #: how the platform measures (the mess factors change these): model -> seconds from a
    #: request to its label (``inf``: never), nodes whose statistics are daily, nodes without
    #: statistics, and segments whose demand dips
    label_delay: dict[str, float] = field(default_factory=dict)
    daily_stats: set[str] = field(default_factory=set)
    unmeasured: set[str] = field(default_factory=set)
    demand_dips: list[DemandDip] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.days * DAY

    def freeze(self, model_id: str, start: float, end: float) -> None:
        self.frozen.setdefault(model_id, []).append((start, end))


def build_plan(scenario: str, world: World, days: int, rng: np.random.Generator,
               strength: float = 1.0) -> Plan:
    """The incidents and distractors of a scenario over ``days`` days, ``strength`` times as
    strong as the scenario's own (see :mod:`.factors`)."""
    plan = Plan(days, strength)
    _background(plan, world, rng)
    onset = _minute((int(days * 0.7) + rng.uniform(0.3, 0.7)) * DAY)
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if scenario == "demo":
        for incident, first, second, target in _DEMO:
            incident(plan, world, rng, _minute(first * plan.end), _minute(second * plan.end), target)
    elif scenario == "clean":
        _clean(plan, world, rng)
    elif scenario == "traffic_ramp":
        _traffic_ramp(plan, world, rng, onset - 3 * DAY, onset)
    else:
        _SINGLE[scenario](plan, world, rng, onset)
    return plan


# --- truth helpers --------------------------------------------------------------------------

def _window(onset: float, end: float) -> dict:
    return {"start": iso(max(onset - BASELINE, 0.0)), "end": iso(end)}


def _entry_topline(world: World, model_id: str) -> dict:
    product, segment = world.busiest_segment(model_id)
    return {"kind": "topline", "product": product, "segment": segment}


def _no_suspects() -> dict:
    return {k: [] for k in ("models", "snapshots", "features", "lineage_nodes",
                            "training_partitions", "experiments")}


def _pause(world: World, node: str) -> dict:
    return {"action": "pause_pipeline", "pipeline_id": world.node_pipeline[node]}


def _previous(outcome: Outcome, release: Release) -> Release:
    """The snapshot that fully served the model when ``release`` came out (the rollback target)."""
    earlier = [r for r in outcome.releases.values()
               if r.model_id == release.model_id and r.published < release.published
               and r.ramp[-1][1] == 1.0 and r.defect is None]
    return max(earlier, key=lambda r: r.published)


def _rollback(outcome: Outcome, release: Release) -> dict:
    return {"action": "rollback_snapshot", "model_id": release.model_id,
            "to_snapshot_id": _previous(outcome, release).snapshot_id}


def _released(outcome: Outcome, model_id: str, published: float) -> Release:
    return next(r for r in outcome.releases.values()
                if r.model_id == model_id and r.published == published)


def _choose(rng: np.random.Generator, given: str | None, options: tuple[str, ...]) -> str:
    return given if given is not None else options[rng.integers(len(options))]


# --- background and distractors -------------------------------------------------------------

def _background(plan: Plan, world: World, rng: np.random.Generator) -> None:
    """What every lake has: harmless config changes and info-level monitoring noise."""
    nodes = world.transforms + [n for n in world.data_nodes if world.node_kind[n] == "table"]
    for k in range(3):
        node = nodes[rng.integers(len(nodes))]
        plan.changes.append(LineageChange(
            float(rng.uniform(0.5, plan.days * 0.5) * DAY), node, "config", f"2.{k}.{rng.integers(10)}",
            "raise executor memory limit" if k % 2 else "bump retry count on transient errors"))
    names = world.feature_names
    for _ in range(max(3, plan.days // 4)):
        name = names[rng.integers(len(names))]
        ts = float(np.floor(rng.uniform(0.2, plan.days - 0.1) * 24) * HOUR)
        kind = ("null_rate", "freshness", "distribution")[rng.integers(3)]
        plan.alerts.append(Alert(ts, name, kind, "info",
                                 f"{kind} briefly outside its 7-day band, back within it next hour"))


def _clean(plan: Plan, world: World, rng: np.random.Generator) -> None:
    """No incident: a no-op change, a small drift in a minor feature, routine retrains."""
    node = world.transforms[rng.integers(len(world.transforms))]
    noop = float((plan.days - 4 + rng.uniform(0.2, 0.8)) * DAY)
    plan.changes.append(LineageChange(noop, node, "config", "4.2.1",
                                      "move job to the new scheduler pool (no logic change)"))
    minor = "conexión 4g"
    drift = NodeEffect(world.features[minor].node_id, "drift", plan.end - 5 * DAY,
                       0.02 * world.features[minor].scale)
    plan.effects.append(drift)
    alert = Alert(plan.end - 2 * DAY + 5 * HOUR, minor, "distribution", "info",
                  "mean 2% above its 7-day band")
    plan.alerts.append(alert)
    window = {"start": iso(plan.end - 4 * DAY), "end": iso(plan.end)}

    def topline_entry(outcome: Outcome) -> dict:
        return _no_issue("clean_topline", {"kind": "topline", "product": "feed", "segment": "us"},
                         window, {"noop_change": node})

    def snapshot_entry(outcome: Outcome) -> dict:
        routine = max((r for r in outcome.releases.values() if r.published < plan.end - DAY),
                      key=lambda r: r.published)
        return _no_issue("routine_snapshot", {"kind": "snapshot", "snapshot": routine.snapshot_id},
                         {"start": iso(routine.published - BASELINE), "end": iso(plan.end)}, {})

    def alert_entry(outcome: Outcome) -> dict:
        return _no_issue("info_alert", {"kind": "feature_alert", "feature": minor, "ts": iso(alert.ts)},
                         {"start": iso(alert.ts - BASELINE), "end": iso(alert.ts + 6 * HOUR)},
                         {"minor_drift": minor})

    plan.truths += [topline_entry, snapshot_entry, alert_entry]


def _no_issue(name: str, entry: dict, window: dict, details: dict) -> dict:
    return {"name": name, "entry": entry, "window": window, "onset": None,
            "verdict": "no_issue", "root_cause": None, "suspects": _no_suspects(),
            "mitigation": None, "details": details}


# --- data incidents -------------------------------------------------------------------------

def _data_incident(plan: Plan, world: World, node: str, onset: float, end: float | None) -> list[str]:
    models = world.models_fed_by(node)
    for model_id in models:
        plan.freeze(model_id, onset - DAY, (end or np.inf) + 4 * DAY)
    plan.sites.append(Site(node, tuple(models), onset))
    return models


def _lineage_suspects(world: World, node: str, model_id: str) -> list[str]:
    """The root, then the data nodes on its paths to the model's features."""
    upstream_of_model = set().union(*(nx.ancestors(world.graph, world.features[f].node_id)
                                      for f in world.models[model_id].features))
    path = (world.downstream(node) & upstream_of_model) - {node}
    return [node] + sorted(path)


def _upstream_corruption(plan: Plan, world: World, rng, onset: float, end: float | None = None,
                         source: str | None = None) -> None:
    source = _choose(rng, source, ("raw.ad_events", "raw.clicks", "raw.listings"))
    corruption = ("nulls", "zeros")[rng.integers(2)]
    broken = 0.4 * plan.strength
    plan.effects.append(NodeEffect(source, corruption, onset, broken, end or np.inf))
    models = _data_incident(plan, world, source, onset, end)
    model_id = models[0]
    alerted = world.features_fed_by(source, model_id)[0]
    rule = AlertRule(alerted, "null_fraction" if corruption == "nulls" else "mean", onset,
                     "critical")
    plan.alert_rules.append(rule)

    def truth(outcome: Outcome) -> dict:
        return {
            "name": "upstream_corruption", "entry": _entry_topline(world, model_id),
            "window": _window(onset, end or outcome.end), "onset": iso(onset),
            "verdict": "root_cause_found", "root_cause": {"kind": "lineage_node", "id": source},
            "suspects": {**_no_suspects(), "models": models,
                         "features": world.features_fed_by(source, model_id),
                         "lineage_nodes": _lineage_suspects(world, source, model_id)},
            "mitigation": _pause(world, source),
            "details": {"corruption": corruption, "broken_fraction": broken,
                        "fixed_at": iso(end) if end else None,
                        "alert": iso(outcome.fired[rule].ts) if rule in outcome.fired else None},
        }

    plan.truths.append(truth)


def _transform_change(plan: Plan, world: World, rng, onset: float, end: float | None = None,
                      node: str | None = None) -> None:
    node = _choose(rng, node, ("xf.price_stats", "xf.ad_ctr_stats", "xf.engagement_agg"))
    factor = 100.0 ** plan.strength  # a unit change (cents), or a smaller mis-scaling
    version = f"3.{rng.integers(1, 9)}.0"
    plan.changes.append(LineageChange(onset, node, "code", version,
                                      "report amounts in cents; durations in milliseconds"))
    plan.effects.append(NodeEffect(node, "scale", onset, factor, end or np.inf))
    if end is not None:
        plan.changes.append(LineageChange(end, node, "code", version + "-revert",
                                          f"revert {version}"))
    models = _data_incident(plan, world, node, onset, end)
    model_id = models[0]

    def truth(outcome: Outcome) -> dict:
        return {
            "name": "transform_change", "entry": _entry_topline(world, model_id),
            "window": _window(onset, end or outcome.end), "onset": iso(onset),
            "verdict": "root_cause_found",
            "root_cause": {"kind": "lineage_change", "id": node, "version": version},
            "suspects": {**_no_suspects(), "models": models,
                         "features": world.features_fed_by(node, model_id),
                         "lineage_nodes": _lineage_suspects(world, node, model_id)},
            "mitigation": _pause(world, node),
            "details": {"scale_factor": factor, "reverted_at": iso(end) if end else None},
        }

    plan.truths.append(truth)


def _feature_alert_early(plan: Plan, world: World, rng, onset: float, end: float | None = None,
                         source: str | None = None) -> None:
    source = _choose(rng, source, ("raw.listings", "raw.ad_events"))
    drift = DRIFT_PER_DAY * plan.strength
    plan.effects.append(NodeEffect(source, "drift", onset, drift, end or np.inf))
    models = _data_incident(plan, world, source, onset, end)
    rules = [AlertRule(f, "mean", onset, "warning") for f in world.features_fed_by(source)]
    plan.alert_rules += rules

    def truth(outcome: Outcome) -> dict:
        first = min((outcome.fired[r] for r in rules if r in outcome.fired), key=lambda a: a.ts)
        model_id = next(m for m in models if first.feature_name in world.models[m].features)
        return {
            "name": "feature_alert_early",
            "entry": {"kind": "feature_alert", "feature": first.feature_name, "ts": iso(first.ts)},
            "window": {"start": iso(onset - BASELINE), "end": iso(first.ts + 3 * HOUR)},
            "onset": iso(onset),
            "verdict": "root_cause_found", "root_cause": {"kind": "lineage_node", "id": source},
            "suspects": {**_no_suspects(), "models": models,
                         "features": world.features_fed_by(source, model_id),
                         "lineage_nodes": _lineage_suspects(world, source, model_id)},
            "mitigation": _pause(world, source),
            "details": {"alert_ts": iso(first.ts), "drift_per_day": drift},
        }

    plan.truths.append(truth)


# --- snapshot incidents ---------------------------------------------------------------------

def _bad_release(plan: Plan, model_id: str, published: float, end: float | None, defect: str | None,
                 ramp=DEFAULT_RAMP) -> Release:
    """A defective release ramped up (and, with ``end``, rolled back then)."""
    day = int(published // DAY)
    if end is not None:
        ramp = ramp + ((end - published, 0.0),)
    release = Release(model_id, published, (day - 3, day - 2, day - 1), defect, ramp)
    plan.releases.append(release)
    plan.freeze(model_id, published - 3 * DAY, (end or np.inf) + 4 * DAY)
    plan.sites.append(Site(None, (model_id,), release.first_traffic))
    return release


def _snapshot_truth(world: World, plan: Plan, name: str, model_id: str, published: float,
                    onset: float, end: float | None, entry: Callable[[Release], dict] | None,
                    root: Callable[[Release], dict], mitigation: Callable[[Outcome, Release], dict],
                    details: Callable[[Outcome, Release], dict],
                    extra_suspects: Callable[[Release], dict] = lambda r: {}) -> None:
    def truth(outcome: Outcome) -> dict:
        release = _released(outcome, model_id, published)
        return {
            "name": name,
            "entry": entry(release) if entry else _entry_topline(world, model_id),
            "window": _window(onset, end or outcome.end), "onset": iso(onset),
            "verdict": "root_cause_found", "root_cause": root(release),
            "suspects": {**_no_suspects(), "models": [model_id],
                         "snapshots": [release.snapshot_id], **extra_suspects(release)},
            "mitigation": mitigation(outcome, release),
            "details": {"published_at": iso(published), "rolled_back_at": iso(end) if end else None,
                        **details(outcome, release)},
        }

    plan.truths.append(truth)


def _bad_training_partition(plan: Plan, world: World, rng, published: float,
                            end: float | None = None, model_id: str | None = None) -> None:
    model_id = _choose(rng, model_id, ("feed_ranker", "ads_ctr"))
    release = _bad_release(plan, model_id, published, end, None)
    onset, bad_day = release.first_traffic, release.partitions[int(rng.integers(3))]
    plan.flipped_labels.add((model_id, bad_day))
    partition = f"{world.models[model_id].dataset_id}/{iso(bad_day * DAY)[:10]}"
    _snapshot_truth(
        world, plan, "bad_training_partition", model_id, published, onset, end, None,
        root=lambda r: {"kind": "training_partition", "id": partition},
        mitigation=_rollback,
        details=lambda o, r: {"corruption": "labels inverted by a join bug",
                              "training_run_id": r.training_run_id},
        extra_suspects=lambda r: {"training_partitions": [partition]})


def _exploding_training(plan: Plan, world: World, rng, published: float,
                        end: float | None = None, model_id: str | None = None) -> None:
    model_id = _choose(rng, model_id, ("feed_ranker", "ads_ctr", "mp_value"))
    onset = _bad_release(plan, model_id, published, end, EXPLODING_LR).first_traffic

    def details(outcome: Outcome, release: Release) -> dict:
        loss, norm = outcome.curves[release.snapshot_id]
        head = np.median(loss[:20])
        exploded = ~np.isfinite(loss) | (loss > 10 * head)
        return {"training_run_id": release.training_run_id,
                "exploding_step": int(np.argmax(exploded)) if exploded.any() else None,
                "max_grad_norm": float(np.nanmax(np.where(np.isfinite(norm), norm, np.nan)))}

    _snapshot_truth(world, plan, "exploding_training", model_id, published, onset, end, None,
                    root=lambda r: {"kind": "snapshot", "id": r.snapshot_id},
                    mitigation=_rollback, details=details)


def _nan_snapshot(plan: Plan, world: World, rng, published: float, end: float | None = None,
                  model_id: str | None = None) -> None:
    model_id = _choose(rng, model_id, ("feed_ranker", "feed_explore", "ads_ctr", "mp_value"))
    onset = _bad_release(plan, model_id, published, end, NAN_LOG_SHIFT).first_traffic
    model = world.models[model_id]
    feature = model.features[model.log_position]

    def truth_details(outcome: Outcome, release: Release) -> dict:
        return {"nan_feature": feature, "graph_node": outcome.log_node[release.snapshot_id],
                "nan_fraction": outcome.nan_fraction.get(release.snapshot_id),
                "rollback": _rollback(outcome, release)}

    _snapshot_truth(  # the workflow starts from the new snapshot itself
        world, plan, "nan_snapshot", model_id, published, onset, end,
        entry=lambda r: {"kind": "snapshot", "snapshot": r.snapshot_id},
        root=lambda r: {"kind": "snapshot", "id": r.snapshot_id},
        mitigation=lambda o, r: {"action": "add_guard", "model_id": model_id, "node": feature,
                                 "guard": "clip"},
        details=truth_details, extra_suspects=lambda r: {"features": [feature]})


def _traffic_ramp(plan: Plan, world: World, rng, published: float, ramp_start: float,
                  model_id: str | None = None) -> None:
    model_id = _choose(rng, model_id, ("feed_ranker", "ads_ctr"))
    steps = np.array([0.0, 1.0, 2.0, 2.8]) * (plan.end - ramp_start) / 3.2
    ramp = ((4 * HOUR, 0.02),) + tuple(
        (_minute(ramp_start - published + s), f * plan.strength)
        for s, f in zip(steps, (0.1, 0.3, 0.55, 0.8)))
    _bad_release(plan, model_id, published, None, UNDERFIT, ramp)

    _snapshot_truth(
        world, plan, "traffic_ramp", model_id, published, ramp_start, None, None,
        root=lambda r: {"kind": "traffic", "id": r.experiment_id},
        mitigation=_rollback,
        details=lambda o, r: {"ramp": [[iso(r.published + t), f] for t, f in r.ramp],
                              "defect": "undertrained snapshot (numerically healthy)"},
        extra_suspects=lambda r: {"experiments": [r.experiment_id]})


_SINGLE = {
    "upstream_corruption": _upstream_corruption,
    "transform_change": _transform_change,
    "bad_training_partition": _bad_training_partition,
    "exploding_training": _exploding_training,
    "nan_snapshot": _nan_snapshot,
    "feature_alert_early": _feature_alert_early,
}

#: the demo's incidents: (incident, onset and fix as fractions of the timeline, target);
#: a traffic ramp's two times are its publication and the start of its ramp-up
_DEMO = (
    (_transform_change, 0.21, 0.33, "xf.price_stats"),
    (_nan_snapshot, 0.39, 0.5, "feed_explore"),
    (_upstream_corruption, 0.59, 0.72, "raw.ad_events"),
    (_traffic_ramp, 0.68, 0.81, "feed_ranker"),
    (_exploding_training, 0.74, 0.9, "mp_value"),
)
