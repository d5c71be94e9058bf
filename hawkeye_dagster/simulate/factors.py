"""Mess factors: what real platforms add to any scenario's incidents.

Each factor changes a built :class:`~.scenarios.Plan` (``weak`` changes the
scenario's effect sizes, so it is applied before the scenario is built): the
incidents and their ground truth stay, the world around them gets harder.
Factors draw from their own random stream (seeded from the lake's seed), so
a lake without factors is exactly what it was before they existed.

- ``routine_ramp``: a healthy retrain of the incident's model published and
  ramped up a few hours before a data incident (the retrain freeze lifted);
- ``decoy_changes``: harmless code/config changes near the onset, at two
  nodes unrelated to the incident and at an ancestor of the bad features
  whose output does not change;
- ``late_labels``: labels arrive 24-72 h late, and the regression model's
  labels never arrive;
- ``daily_stats`` / ``mixed_cadence``: ``lineage_node_stats`` daily instead
  of hourly, for every node or for half of them;
- ``missing_stats``: 30-50% of the tables and transforms have no statistics;
- ``external_dip``: a segment of another product loses 10-20% of its
  requests for 6-18 h (volume and metric fall together, no model changes):
  an extra ``no_issue`` truth entry;
- ``weak``: the incident's effect is 25-50% of the scenario's (a quarter to
  half the broken rows, a mis-scaling of 3-10x instead of 100x, a slower
  drift, a smaller ramp); snapshot defects keep their size.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from hawkeye_dagster.simulate.requests import DAY, HOUR
from hawkeye_dagster.simulate.rollout import Release
from hawkeye_dagster.simulate.scenarios import (DemandDip, LineageChange, Outcome, Plan, Site,
                                                _no_issue, _minute, iso)
from hawkeye_dagster.simulate.world import World

FACTORS = ("routine_ramp", "decoy_changes", "late_labels", "daily_stats", "mixed_cadence",
           "missing_stats", "external_dip", "weak")
#: the regression product's label: a sale price known only when the item sells (never, here)
_UNLABELED_TASK = "regression"


def check_factors(factors: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The factors, in :data:`FACTORS` order without repeats; unknown names refused."""
    unknown = [f for f in factors if f not in FACTORS]
    if unknown:
        raise ValueError(f"unknown factor {unknown[0]!r}; choose from {', '.join(FACTORS)}")
    return tuple(f for f in FACTORS if f in factors)


def factor_rng(seed: int) -> np.random.Generator:
    """The factors' own stream: the lake's seed, apart from the scenario's draws."""
    return np.random.default_rng([seed, 14])


def strength(factors: tuple[str, ...], rng: np.random.Generator) -> float:
    """The incidents' effect size relative to the scenario's (``weak``: 0.25-0.5)."""
    return float(rng.uniform(0.25, 0.5)) if "weak" in factors else 1.0


def apply_factors(plan: Plan, world: World, factors: tuple[str, ...],
                  rng: np.random.Generator) -> None:
    """Add every factor but ``weak`` to a built plan, in :data:`FACTORS` order."""
    for factor in factors:
        if factor != "weak":
            _APPLY[factor](plan, world, rng)


def _focus(plan: Plan) -> Site:
    """The incident the factors crowd (a clean world gets a pretend onset two days before its
    end, where its own entries look)."""
    return plan.sites[0] if plan.sites else Site(None, (), plan.end - 2 * DAY)


def _routine_ramp(plan: Plan, world: World, rng: np.random.Generator) -> None:
    site = _focus(plan)
    if site.node is None:  # only a data incident: a snapshot incident has its own release
        return
    model_id = site.models[0]
    published = _minute(site.onset - rng.uniform(2, 8) * HOUR)
    day = int(published // DAY)
    plan.releases.append(Release(model_id, published, (day - 3, day - 2, day - 1)))


def _decoy_changes(plan: Plan, world: World, rng: np.random.Generator) -> None:
    site = _focus(plan)
    # above the bad features (those the node feeds; a snapshot incident's: its model's)
    names = (world.features_fed_by(site.node) if site.node else
             [f for m in site.models for f in world.models[m].features])
    features = {world.features[f].node_id for f in names}
    above = set().union(*(nx.ancestors(world.graph, n) for n in features))
    moving = world.downstream(site.node) if site.node else set()
    quiet_ancestors = sorted(above - moving)
    unrelated = sorted(set(world.data_nodes) - above - moving)
    picks = [(n, "code", "refactor: extract a helper (no change in output)")
             for n in _pick(rng, quiet_ancestors, 1)]
    picks += [(n, "config", "move job to another worker pool")
              for n in _pick(rng, unrelated, 2)]
    for k, (node, kind, description) in enumerate(picks):
        ts = _minute(site.onset - rng.uniform(0.5, 6) * HOUR)
        plan.changes.append(LineageChange(float(ts), node, kind, f"9.{k}.{rng.integers(10)}",
                                          description))


def _pick(rng: np.random.Generator, options: list[str], k: int) -> list[str]:
    return [options[i] for i in rng.permutation(len(options))[:k]]


def _late_labels(plan: Plan, world: World, rng: np.random.Generator) -> None:
    for model_id, model in world.models.items():
        plan.label_delay[model_id] = (np.inf if model.task == _UNLABELED_TASK
                                      else float(rng.uniform(24, 72) * HOUR))


def _daily_stats(plan: Plan, world: World, rng: np.random.Generator) -> None:
    plan.daily_stats |= set(_measured(world))


def _mixed_cadence(plan: Plan, world: World, rng: np.random.Generator) -> None:
    nodes = _measured(world)
    plan.daily_stats |= set(_pick(rng, nodes, len(nodes) // 2))


def _measured(world: World) -> list[str]:
    return world.data_nodes + [f.node_id for f in world.features.values()]


def _missing_stats(plan: Plan, world: World, rng: np.random.Generator) -> None:
    intermediate = [n for n in world.data_nodes if world.node_kind[n] in ("table", "transform")]
    share = rng.uniform(0.3, 0.5)
    plan.unmeasured |= set(_pick(rng, intermediate, int(round(share * len(intermediate)))))


def _external_dip(plan: Plan, world: World, rng: np.random.Generator) -> None:
    site = _focus(plan)
    busy = {world.models[m].product for m in site.models}
    options = [k for k, (p, _) in enumerate(world.segments) if p not in busy]
    segment = options[int(rng.integers(len(options)))]
    start = float(np.floor((plan.end - rng.uniform(1.5, 3.5) * DAY) / HOUR) * HOUR)
    end = start + float(rng.integers(6, 19)) * HOUR
    dip = DemandDip(segment, start, end, float(rng.uniform(0.8, 0.9)))
    plan.demand_dips.append(dip)
    product, name = world.segments[segment]

    def truth(outcome: Outcome) -> dict:
        return _no_issue("external_dip", {"kind": "topline", "product": product, "segment": name},
                         {"start": iso(start - 3 * DAY), "end": iso(plan.end)},
                         {"dip_start": iso(start), "dip_end": iso(end),
                          "demand_factor": dip.factor})

    plan.truths.append(truth)


_APPLY = {"routine_ramp": _routine_ramp, "decoy_changes": _decoy_changes,
          "late_labels": _late_labels, "daily_stats": _daily_stats,
          "mixed_cadence": _mixed_cadence, "missing_stats": _missing_stats,
          "external_dip": _external_dip}
