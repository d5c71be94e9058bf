"""Snapshot releases and their traffic: retrain schedule, ramps, rollbacks, routing.

Each release is one experiment arm: it ramps up (5% -> 25% -> 100% by
default) while the arm that served before ramps down by the same amount, so
the fractions of a (model, segment) always sum to 1. A ramp that ends at 0
is a rollback: the previous arm gets its traffic back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from hawkeye_dagster.simulate.requests import DAY, HOUR

#: (offset from publication in seconds, traffic fraction of the new arm)
DEFAULT_RAMP = ((4 * HOUR, 0.05), (12 * HOUR, 0.25), (26 * HOUR, 1.0))


@dataclass(frozen=True)
class Release:
    """A snapshot to train, publish and roll out."""

    model_id: str
    #: seconds since the timeline start (negative: before it)
    published: float
    #: day indices (since the start) of the training partitions
    partitions: tuple[int, ...]
    defect: str | None = None
    #: (offset from ``published`` in seconds, fraction of the new arm)
    ramp: tuple[tuple[float, float], ...] = DEFAULT_RAMP
    #: numbered in publication order per model by :func:`number_releases`
    version: int = 0

    @property
    def snapshot_id(self) -> str:
        return f"{self.model_id}-v{self.version}"

    @property
    def experiment_id(self) -> str:
        return f"rollout-{self.snapshot_id}"

    @property
    def training_run_id(self) -> str:
        return f"train-{self.snapshot_id}"

    @property
    def first_traffic(self) -> float:
        return self.published + min(t for t, f in self.ramp if f > 0)


@dataclass
class ArmChange:
    ts: float
    experiment_id: str
    snapshot_id: str
    fraction: float


@dataclass
class TrafficPlan:
    """Per model, the arm changes of every release in time order."""

    changes: dict[str, list[ArmChange]] = field(default_factory=dict)

    @classmethod
    def from_releases(cls, releases: list[Release]) -> "TrafficPlan":
        plan = cls()
        for model_id in sorted({r.model_id for r in releases}):
            ordered = sorted((r for r in releases if r.model_id == model_id), key=lambda r: r.published)
            changes: list[ArmChange] = []
            incumbent: Release | None = None
            for release in ordered:
                for offset, fraction in release.ramp:
                    ts = release.published + offset
                    changes.append(ArmChange(ts, release.experiment_id, release.snapshot_id, fraction))
                    if incumbent is not None:
                        changes.append(ArmChange(ts, incumbent.experiment_id, incumbent.snapshot_id,
                                                 1.0 - fraction))
                if release.ramp[-1][1] == 1.0:
                    incumbent = release
            plan.changes[model_id] = sorted(changes, key=lambda c: c.ts)
        return plan

    def route(self, model_id: str, ts: np.ndarray, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
        """Pick each request's snapshot by the arms' fractions at its time.

        Returns the snapshot ids and, per request, the index into them (-1 if no arm serves).
        """
        changes = self.changes[model_id]
        snapshots = list(dict.fromkeys(c.snapshot_id for c in changes))
        times = np.array(sorted({c.ts for c in changes}))
        fractions = np.zeros((len(times), len(snapshots)))
        for c in changes:
            fractions[np.searchsorted(times, c.ts):, snapshots.index(c.snapshot_id)] = c.fraction
        state = np.searchsorted(times, ts, side="right") - 1
        cumulative = np.cumsum(fractions, axis=1)[np.maximum(state, 0)]
        u = rng.random(len(ts))[:, None]
        choice = (u >= cumulative).sum(axis=1)
        choice[(state < 0) | (choice >= len(snapshots))] = -1
        return snapshots, choice


def regular_releases(model_ids: list[str], days: int, every: int,
                     frozen: dict[str, list[tuple[float, float]]]) -> list[Release]:
    """The initial snapshot of each model and periodic retrains on the 3 previous days.

    ``frozen`` holds, per model, time intervals (seconds) in which no retrain is published.
    """
    releases = []
    for i, model_id in enumerate(model_ids):
        releases.append(Release(model_id, -DAY + 6 * HOUR, (-4, -3, -2), ramp=((6 * HOUR, 1.0),)))
        for day in range(1 + i, days - 1, every):
            published = day * DAY + (2 + i) * HOUR
            if not any(a <= published <= b for a, b in frozen.get(model_id, [])):
                releases.append(Release(model_id, published, (day - 3, day - 2, day - 1)))
    return releases


def number_releases(releases: list[Release]) -> list[Release]:
    """Number each model's releases 1, 2, ... in publication order; returns them in that order."""
    ordered = sorted(releases, key=lambda r: (r.published, r.model_id))
    counts: dict[str, int] = {}
    numbered = []
    for release in ordered:
        counts[release.model_id] = counts.get(release.model_id, 0) + 1
        numbered.append(replace(release, version=counts[release.model_id]))
    return numbered
