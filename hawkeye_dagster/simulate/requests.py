"""Requests, hour by hour: latent truth, every lineage node's data, features and labels.

A request's latent factors (with daily/weekly seasonality) flow through the
lineage graph: a source carries a noisy projection of them, tables and
transforms mix their inputs' values, a feature is a unit-bearing projection
of its transform. A null anywhere upstream is a null downstream (NaN
propagates through the mixing), which is how a corruption at a source reaches
the features. Labels come from the latent factors, not from the features, so
models learn them only as well as the features carry the truth.
"""

from __future__ import annotations

from collections.abc import Sequence

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import expit

from hawkeye_dagster.simulate.world import LATENT_DIM, NODE_CHANNELS, World

HOUR = 3600.0
DAY = 86400.0
#: the timeline's first instant; times in the simulator are seconds since it
START = np.datetime64("2026-10-01T00:00:00", "s")


@dataclass(frozen=True)
class NodeEffect:
    """A data incident (or distractor) at one lineage node from ``start`` until ``end``.

    ``nulls``: a share ``magnitude`` of the node's rows become null;
    ``zeros``: a share ``magnitude`` of the node's rows become 0 (a parser that writes 0 for
    what it cannot read);
    ``scale``: the node's values are multiplied by ``magnitude`` (a unit change);
    ``drift``: the node's values shift by ``magnitude`` per day since ``start``.
    Times are seconds since the timeline start.
    """

    node_id: str
    kind: Literal["nulls", "zeros", "scale", "drift"]
    start: float
    magnitude: float
    end: float = np.inf


@dataclass(frozen=True)
class DemandDip:
    """Fewer requests in one segment (an outage elsewhere, a holiday): volume and metric fall
    together while every model serves as well as before. ``factor`` scales the demand."""

    #: index into ``world.segments``
    segment: int
    start: float
    end: float
    factor: float


def demand(hours: np.ndarray, n_segments: int, dips: Sequence[DemandDip]) -> np.ndarray:
    """Each (hour, segment)'s demand relative to normal, ``[len(hours), n_segments]``: 1 but
    in a dip (an hour counts when its middle falls inside it)."""
    level = np.ones((len(hours), n_segments))
    middle = hours.astype(float) * HOUR + HOUR / 2
    for dip in dips:
        level[(middle >= dip.start) & (middle < dip.end), dip.segment] *= dip.factor
    return level


@dataclass
class Requests:
    """One batch of requests, sorted by time. ``n`` rows throughout."""

    #: seconds since the timeline start, ``[n]``
    ts: np.ndarray
    #: index into ``world.segments``, ``[n]``
    segment: np.ndarray
    #: channel 0 of every data node (NaN = null), ``[n, len(world.data_nodes)]``
    node_primary: np.ndarray
    #: feature values before serving-time filling (NaN = null), ``[n, len(world.features)]``
    features: np.ndarray
    #: true click probability (binary products) or expected value (regression), ``[n]``
    truth: np.ndarray
    #: realised label, ``[n]``
    label: np.ndarray

    def served_features(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Feature values as a model receives them, ``float32 [len(rows), len(columns)]``.

        Serving fills a null feature with 0, the feature store's default.
        """
        return np.nan_to_num(self.features[np.ix_(rows, columns)], nan=0.0).astype(np.float32)


def weekend(ts: np.ndarray) -> np.ndarray:
    """Whether ``ts`` (seconds since ``START``, a Thursday) falls on a Saturday or Sunday."""
    return (ts // DAY + 3) % 7 >= 5


def daily_cycle(ts: np.ndarray, peak_hour: float) -> np.ndarray:
    """A sinusoid over the UTC day, 1 at ``peak_hour`` and -1 twelve hours later."""
    return np.sin(2 * np.pi * ((ts / HOUR) % 24 - peak_hour + 6) / 24)


def traffic_level(ts: np.ndarray) -> np.ndarray:
    """Relative request volume at ``ts`` (seconds since ``START``): daily and weekly cycles."""
    return (1 + 0.35 * daily_cycle(ts, 16)) * np.where(weekend(ts), 0.88, 1.0)


def generate_requests(world: World, hours: np.ndarray, effects: list[NodeEffect],
                      rng: np.random.Generator, dips: Sequence[DemandDip] = ()) -> Requests:
    """Simulate every segment's requests in the given hours (hour indices since the start)."""
    segments = world.segments
    weights = np.array([world.products[p].segments[s] for p, s in segments])
    start = hours.astype(float) * HOUR
    expected = world.scale.requests_per_hour * np.outer(traffic_level(start + HOUR / 2), weights)
    expected = expected * demand(hours, len(segments), dips)
    counts = rng.poisson(expected).ravel()
    hour_of_row = np.repeat(np.repeat(start, len(segments)), counts)
    segment = np.repeat(np.tile(np.arange(len(segments)), len(hours)), counts)
    ts = hour_of_row + rng.uniform(0, HOUR, len(hour_of_row))
    order = np.argsort(ts, kind="stable")
    ts, segment = ts[order], segment[order]

    z = _latent(world, ts, segment, rng)
    values = _node_values(world, ts, z, effects, rng)
    node_primary = np.stack([values[n][:, 0] for n in world.data_nodes], axis=1)
    features = _features(world, values, ts, effects, rng)
    truth, label = _labels(world, ts, segment, z, rng)
    return Requests(ts, segment, node_primary, features, truth, label)


def _latent(world: World, ts, segment, rng) -> np.ndarray:
    z = rng.normal(size=(len(ts), LATENT_DIM))
    shift = np.array([world.segment_shift[s] for _, s in world.segments])[segment]
    z[:, [0, 5, 6]] += shift[:, None]
    z[:, 0] += 0.25 * daily_cycle(ts, 20)
    z[:, 2] += 0.2 * weekend(ts)
    z[:, 6] += 0.15 * daily_cycle(ts, 13)
    return z


def _apply(effect: NodeEffect, ts: np.ndarray, values: np.ndarray, rng) -> None:
    """Apply one effect in place to a node's values, ``[n]`` or ``[n, k]``."""
    active = (ts >= effect.start) & (ts < effect.end)
    if effect.kind in ("nulls", "zeros"):
        broken = active & (rng.random(len(ts)) < effect.magnitude)
        values[broken] = np.nan if effect.kind == "nulls" else 0.0
    elif effect.kind == "scale":
        values[active] *= effect.magnitude
    else:
        drift = np.where(active, effect.magnitude * (ts - effect.start) / DAY, 0.0)
        values += drift.reshape((-1,) + (1,) * (values.ndim - 1))


def _node_values(world: World, ts, z, effects, rng) -> dict[str, np.ndarray]:
    """Every data node's values ``[n, C]`` (NaN rows are nulls), in topological order."""
    values: dict[str, np.ndarray] = {}
    for node in world.data_nodes:
        if world.node_kind[node] == "source":
            v = z @ world.node_mix[node] + rng.normal(0.0, 0.3, (len(ts), NODE_CHANNELS))
        else:
            inputs = np.concatenate([values[u] for u in world.graph.predecessors(node)], axis=1)
            v = inputs @ world.node_mix[node] + rng.normal(0.0, 0.1, (len(ts), NODE_CHANNELS))
        v += world.node_offset[node]
        v[rng.random(len(ts)) < world.node_null[node]] = np.nan
        for effect in effects:
            if effect.node_id == node:
                _apply(effect, ts, v, rng)
        values[node] = v
    return values


def _signals(world: World, values: dict[str, np.ndarray]) -> np.ndarray:
    """Each feature's projection of its transform's channels, ``[n, F]`` (NaN where that row is null)."""
    channels = np.concatenate([values[t] for t in world.transforms], axis=1)
    signals = np.nan_to_num(channels, nan=0.0) @ world.feature_projection
    null = np.stack([np.isnan(values[t][:, 0]) for t in world.transforms], axis=1)
    signals[null[:, world.feature_transform_index]] = np.nan
    return signals


def calibrate(world: World, rng: np.random.Generator) -> None:
    """Fix each feature's signal center and spread from one clean simulated day."""
    ts = np.sort(rng.uniform(0, DAY, 20_000))
    segment = rng.integers(0, len(world.segments), len(ts))
    signals = _signals(world, _node_values(world, ts, _latent(world, ts, segment, rng), [], rng))
    world.feature_center = np.nanmean(signals, axis=0)
    # a floor, so that no feature is a hair-trigger amplifier of its upstream's shifts
    world.feature_spread = np.maximum(np.nanstd(signals, axis=0), 0.5 * np.nanstd(signals))


def _features(world: World, values, ts, effects, rng) -> np.ndarray:
    u = (_signals(world, values) - world.feature_center) / world.feature_spread
    u += rng.normal(size=u.shape) * world.feature_array("noise")
    null = np.isnan(u) | (rng.random(u.shape) < 0.002)
    u[null] = 0.0
    offset = world.feature_array("offset")
    counts = np.logaddexp(0.0, 1.3 * u - 0.3) * offset
    features = world.feature_array("scale") * np.where(world.feature_array("is_count"), counts,
                                                        offset + u)
    features[null] = np.nan
    for effect in effects:
        column = world.feature_column.get(effect.node_id)
        if column is not None:
            _apply(effect, ts, features[:, column], rng)
    return features


def _labels(world: World, ts, segment, z, rng) -> tuple[np.ndarray, np.ndarray]:
    product_of = np.array([list(world.products).index(p) for p, _ in world.segments])[segment]
    truth = np.empty(len(ts))
    label = np.empty(len(ts))
    for k, product in enumerate(world.products.values()):
        rows = product_of == k
        zr = z[rows]
        i, j, a = product.label_interaction
        score = product.label_intercept + zr @ product.label_weights + a * zr[:, i] * zr[:, j]
        if product.task == "binary_classification":
            score += 0.2 * daily_cycle(ts[rows], 21)
            truth[rows] = expit(score)
            label[rows] = (rng.random(rows.sum()) < truth[rows]).astype(float)
        else:
            truth[rows] = score + 2.0 * daily_cycle(ts[rows], 19)
            label[rows] = truth[rows] + rng.normal(0.0, 3.0, rows.sum())
    return truth, label
