"""What the platform measures: top-line metrics from the served predictions, and node stats.

Top lines are driven by what the served predictions do to users: a binary
product shows an item when the predicted probability beats the item's cost
(an unscored, NaN prediction is shown by default), and earns the true click
probability minus that cost; a regression product prices items, and an item
sells less the further the predicted price is from its true value. The
volume metric is seasonal demand times the share of the best achievable
value (the value of perfect predictions on the same requests) that the
served predictions earned, so a bad snapshot or bad features move a
segment's top line in proportion to the traffic they serve, while the
hour-to-hour noise stays that of a large real population.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hawkeye_dagster.simulate import requests as _requests
from hawkeye_dagster.simulate.requests import HOUR, DemandDip, Requests, daily_cycle, traffic_level
from hawkeye_dagster.simulate.scenarios import Alert, AlertRule
from hawkeye_dagster.simulate.world import World

#: product -> (higher-is-better volume metric, lower-is-better rate metric, value per request)
METRICS = {
    "feed": ("engagement", "hide_rate_lower_is_better", 0.15),
    "ads": ("ad_revenue", "ad_hide_rate_lower_is_better", 0.05),
    "marketplace": ("gmv", "pricing_error_lower_is_better", 9.0),
}
#: real requests per simulated request, for the volume metrics
_VOLUME = 1000.0


def topline(world: World, requests: Requests, prediction: np.ndarray, hours: np.ndarray,
            rng: np.random.Generator, dips: Sequence[DemandDip] = ()) -> dict[str, np.ndarray]:
    """Each (segment, hour, metric) value as columns ``hour``, ``segment``, ``metric``, ``value``.

    ``prediction`` ``[n]`` is what each request was served; ``hours`` the hour indices covered;
    ``dips`` lower the demand as they lowered the requests.
    """
    n_seg = len(world.segments)
    key = np.searchsorted(hours, (requests.ts // HOUR).astype(int)) * n_seg + requests.segment
    size = len(hours) * n_seg
    seg_cost = np.array([world.products[p].cost for p, _ in world.segments])
    seg_binary = np.array([world.products[p].task == "binary_classification"
                           for p, _ in world.segments])
    seg_weight = np.array([world.products[p].segments[s] for p, s in world.segments])

    cost, binary, truth = seg_cost[requests.segment], seg_binary[requests.segment], requests.truth
    shown = binary & ((prediction > cost) | np.isnan(prediction))
    error = np.abs(prediction - truth)
    priced = ~binary & np.isfinite(error)
    sold = np.where(priced, truth * np.exp(-np.where(priced, error, 0.0) / cost), 0.0)

    def per_cell(values):
        return np.bincount(key, weights=values, minlength=size)

    best = np.where(binary, np.maximum(truth - cost, 0.0), truth)
    earned = np.where(binary, shown * (truth - cost), sold)
    share = np.maximum(per_cell(earned), 0.0) / np.maximum(per_cell(best), 1e-9)
    mid_hour = hours * HOUR + HOUR / 2
    value = np.array([METRICS[p][2] for p, _ in world.segments])
    demand = _VOLUME * world.scale.requests_per_hour * np.outer(
        traffic_level(mid_hour) * (1 + 0.08 * daily_cycle(mid_hour, 21)), seg_weight * value)
    demand = (demand * _requests.demand(hours, n_seg, dips)).ravel()
    first = demand * (0.25 + 0.75 * share)
    second = np.where(
        np.tile(seg_binary, len(hours)),
        per_cell(shown * (1.0 - truth)) / np.maximum(per_cell(shown.astype(float)), 1.0),
        per_cell(np.where(priced, error, 0.0)) / np.maximum(per_cell(priced.astype(float)), 1.0),
    )
    noise = rng.lognormal(0.0, 0.01, (2, size))
    cell_hour = np.repeat(hours, n_seg)
    cell_segment = np.tile(np.arange(n_seg), len(hours))
    names = np.array([METRICS[p][:2] for p, _ in world.segments])[cell_segment]
    return {
        "hour": np.concatenate([cell_hour, cell_hour]),
        "segment": np.concatenate([cell_segment, cell_segment]),
        "metric": np.concatenate([names[:, 0], names[:, 1]]),
        "value": np.concatenate([first * noise[0], second * noise[1]]),
    }


#: rows a node produces per simulated request, by node kind
_ROWS_PER_REQUEST = {"source": 40, "table": 25, "transform": 10, "feature": 10}


def stat_nodes(world: World) -> list[str]:
    """The nodes that :func:`node_stats` measures, in its column order."""
    return world.data_nodes + [f.node_id for f in world.features.values()]


def node_stats(world: World, requests: Requests, hours: np.ndarray) -> dict[str, np.ndarray]:
    """``row_count``, ``null_fraction``, ``mean`` and ``std`` of every node per hour.

    Data nodes are measured on their primary column, feature nodes on their
    values before serving-time filling. Returns, per stat, ``[len(hours),
    len(stat_nodes(world))]``.
    """
    values = np.concatenate([requests.node_primary, requests.features], axis=1)
    # requests come sorted by time, so each hour's rows are contiguous
    hour_index = np.searchsorted(hours, (requests.ts // HOUR).astype(int))
    starts = np.searchsorted(hour_index, np.arange(len(hours)))
    rows = np.diff(np.append(starts, len(hour_index))).astype(float)
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)

    def per_hour(x):
        if not len(x):
            return np.zeros((len(hours), x.shape[1]))
        sums = np.add.reduceat(x, np.minimum(starts, len(x) - 1), axis=0)
        sums[rows == 0] = 0.0  # reduceat gives the next row for an empty hour
        return sums

    n = per_hour(present.astype(float))
    total = per_hour(filled)
    squares = per_hour(filled ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0) * n / np.maximum(n - 1, 1))
    per_row = np.array([_ROWS_PER_REQUEST[world.node_kind[x]] for x in stat_nodes(world)])
    return {"row_count": rows[:, None] * per_row,
            "null_fraction": 1.0 - n / np.maximum(rows[:, None], 1.0),
            "mean": mean, "std": std}


def fire(rule: AlertRule, series: np.ndarray) -> Alert | None:
    """Run a feature monitor over a feature's hourly stat (``series[h]`` for hour ``h`` since the start).

    ``null_fraction`` fires above 10%; ``mean`` fires when the hourly mean
    leaves its previous 3 days' band by more than 5 standard deviations and
    by more than 10% of its level.
    The alert is raised 5 minutes after the hour that crossed closes.
    """
    first = int(rule.start // HOUR)
    if rule.stat == "null_fraction":
        crossed = series[first:] > 0.1
        band = f"above 0.10 (3-day median {np.nanmedian(series[max(first - 72, 0):first]):.3f})"
    else:
        baseline = series[max(first - 72, 0):first]
        center, spread = np.nanmean(baseline), np.nanstd(baseline)
        tolerance = max(5 * spread, 0.1 * abs(center))
        crossed = np.abs(series[first:] - center) > tolerance
        band = f"outside its 3-day band {center:.4g} ± {tolerance:.2g}"
    if not crossed.any():
        return None
    hour = first + int(np.argmax(crossed))
    return Alert((hour + 1) * HOUR + 300.0, rule.feature, f"{rule.stat}_shift", rule.severity,
                 f"hourly {rule.stat} {series[hour]:.4g} {band}")


def stat_rows(nodes: list[str], stats: dict[str, np.ndarray], daily: set[str],
              unmeasured: set[str]) -> dict[str, np.ndarray]:
    """``lineage_node_stats`` columns from :func:`node_stats`' hourly arrays (``[hours, nodes]``
    per stat, hours from the timeline start, whole days): hourly rows of the nodes measured
    hourly, then one row a day (at midnight) of the ``daily`` nodes; ``unmeasured`` nodes have
    none. A day's ``row_count`` is the sum of its hours, ``null_fraction``, ``mean`` and ``std``
    those of all its rows pooled."""
    names = np.array(nodes)
    hourly = ~np.isin(names, list(daily | unmeasured))
    per_day = np.isin(names, list(daily - unmeasured))
    n_hours = stats["mean"].shape[0]
    columns = [_long(stats, names, hourly, np.arange(n_hours) * HOUR)]
    if per_day.any():
        pooled = _pooled_days({k: v[:, per_day] for k, v in stats.items()})
        columns.append(_long(pooled, names[per_day], np.ones(per_day.sum(), bool),
                             np.arange(n_hours // 24) * 24 * HOUR))
    return {k: np.concatenate([c[k] for c in columns]) for k in columns[0]}


def _long(stats: dict[str, np.ndarray], names: np.ndarray, keep: np.ndarray,
          ts: np.ndarray) -> dict[str, np.ndarray]:
    """Long rows (stat, then time, then node) of the kept columns of ``[len(ts), nodes]`` arrays."""
    kept, n = names[keep], len(ts)
    return {"ts": np.tile(np.repeat(ts, len(kept)), len(stats)),
            "node_id": np.tile(kept, n * len(stats)),
            "stat": np.repeat(list(stats), n * len(kept)),
            "value": np.concatenate([v[:, keep].ravel() for v in stats.values()])}


def _pooled_days(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hourly ``[24 D, N]`` statistics pooled into daily ``[D, N]`` ones (weights: present rows)."""
    days = {k: v.reshape(-1, 24, v.shape[1]) for k, v in stats.items()}
    rows = days["row_count"]
    present = rows * (1.0 - days["null_fraction"])
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = np.where(np.isfinite(days["mean"]), present, 0.0)
        total = weight.sum(axis=1)
        mean = np.nansum(weight * days["mean"], axis=1) / total
        square = np.nansum(weight * (days["std"] ** 2 + days["mean"] ** 2), axis=1) / total
        return {"row_count": rows.sum(axis=1),
                "null_fraction": 1.0 - present.sum(axis=1) / np.maximum(rows.sum(axis=1), 1.0),
                "mean": mean, "std": np.sqrt(np.maximum(square - mean ** 2, 0.0))}
