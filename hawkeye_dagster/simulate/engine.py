"""Run a scenario day by day and write the lake and its ground truth.

Each day: publish the snapshots due (trained for real on earlier days'
``training_data`` partitions, exported, loaded back), simulate the day's
requests, route them to models and snapshot arms, run the loaded snapshots
on the served feature values, then measure the top line and node stats and
log samples and the day's training partitions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from hawkeye_dagster.contract import CONTRACT_VERSION
from hawkeye_dagster.simulate import measure
from hawkeye_dagster.simulate.requests import DAY, HOUR, Requests, calibrate, generate_requests
from hawkeye_dagster.simulate.rollout import (Release, TrafficPlan, number_releases,
                                              regular_releases)
from hawkeye_dagster.simulate.scenarios import SCENARIOS, Outcome, build_plan, iso
from hawkeye_dagster.simulate.training import Exporter, log_node_name, predict, train
from hawkeye_dagster.simulate.world import PRE_DAYS, SCALES, World, build_world
from hawkeye_dagster.simulate.encoding import EncodingKind, LakeEncoding
from hawkeye_dagster.simulate.factors import apply_factors, check_factors, factor_rng, strength
from hawkeye_dagster.simulate.write import write_table

RETRAIN_EVERY_DAYS = 4


def simulate(out_dir: str | Path, scenario: str = "demo", seed: int = 0, scale: str = "small",
             progress: Callable[[str], None] | None = None,
             encoding: EncodingKind | str = EncodingKind.VARIED,
             factors: Sequence[str] = ()) -> dict:
    """Write a simulated telemetry lake at ``out_dir`` and return its ground truth.

    The truth is also written to ``<out_dir>.truth.json`` beside the lake
    (never inside it). The lake is generated in a temporary folder next to
    ``out_dir`` and renamed into place, so a failure leaves nothing behind.
    Deterministic for a given (scenario, seed, scale). ``encoding`` is how the
    files store it (:mod:`hawkeye_dagster.simulate.encoding`): ``varied`` (the
    default) draws one of the contract's encodings per file from the seed,
    ``canonical`` writes them all alike; the lake's content is the same.
    ``factors`` (:data:`~hawkeye_dagster.simulate.factors.FACTORS`) add the mess of real
    platforms to the scenario; the truth lists them.
    """
    factors = check_factors(list(factors))
    if factors and scenario == "demo":
        raise ValueError("factors combine with a single-incident scenario or clean, not demo")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda message: None)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _single_threaded_torch():
            truth = _Simulation(scenario, seed, scale, work, say,
                                LakeEncoding(encoding, seed), factors).run()
        if out.exists():
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    truth_path = out.parent / f"{out.name}.truth.json"
    partial = truth_path.with_name(truth_path.name + ".partial")
    partial.write_text(json.dumps(truth, indent=1, ensure_ascii=False))
    os.replace(partial, truth_path)
    say(f"lake written to {out}; ground truth in {truth_path}")
    return truth


@contextlib.contextmanager
def _single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Simulation:
    def __init__(self, scenario: str, seed: int, scale: str, root: Path, say,
                 encoding: LakeEncoding, factors: tuple[str, ...] = ()):
        self.scenario, self.seed, self.scale_name, self.root, self.say = scenario, seed, scale, root, say
        self.write_table = functools.partial(write_table, encoding=encoding)
        self.rng = np.random.default_rng(seed)
        self.world: World = build_world(SCALES[scale], self.rng)
        calibrate(self.world, self.rng)
        scale_spec = SCALES[scale]
        self.days = scale_spec.demo_days if scenario == "demo" else scale_spec.days
        self.factors = factors
        mess = factor_rng(seed)
        self.plan = build_plan(scenario, self.world, self.days, self.rng,
                               strength(factors, mess))
        apply_factors(self.plan, self.world, factors, mess)
        self.releases = number_releases(self.plan.releases + regular_releases(
            list(self.world.models), self.days, RETRAIN_EVERY_DAYS, self.plan.frozen))
        self.traffic = TrafficPlan.from_releases(self.releases)
        names = self.world.feature_names
        self.columns = {m: np.array([names.index(f) for f in model.features])
                        for m, model in self.world.models.items()}
        self.partitions: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self.exporter = Exporter(encoding.batch_dim)
        self.modules: dict[str, torch.nn.Module] = {}
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.log_node: dict[str, str] = {}
        self.served = {r.snapshot_id: np.zeros(2) for r in self.releases}  # [requests, NaN]
        self.topline: list[dict] = []
        self.stats: list[dict] = []

    def run(self) -> dict:
        for day in range(-PRE_DAYS, self.days):
            self._publish(day)
            self._simulate_day(day)
            if day >= 0:
                self.say(f"{self.scenario}: day {day + 1}/{self.days}")
        self.say("writing tables")
        fired = self._write_tables()
        outcome = Outcome(
            end=self.plan.end, releases={r.snapshot_id: r for r in self.releases},
            curves=self.curves, log_node=self.log_node,
            nan_fraction={s: float(n / total) for s, (total, n) in self.served.items() if total},
            fired=fired,
        )
        return {
            "scenario": self.scenario, "seed": self.seed, "scale": self.scale_name,
            "contract": CONTRACT_VERSION, "start": iso(0.0), "end": iso(self.plan.end),
            "factors": list(self.factors),
            "incidents": [truth(outcome) for truth in self.plan.truths],
        }

    # --- snapshots ------------------------------------------------------------------------

    def _publish(self, day: int) -> None:
        for release in self.releases:
            if day * DAY <= release.published < (day + 1) * DAY:
                self._train_and_export(release)
        needed = {(r.model_id, d) for r in self.releases if r.published >= (day + 1) * DAY
                  for d in r.partitions}
        self.partitions = {key: part for key, part in self.partitions.items() if key in needed}

    def _train_and_export(self, release: Release) -> None:
        model = self.world.models[release.model_id]
        parts = [self.partitions[(model.model_id, d)] for d in release.partitions]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        result = train(x, y, log_position=model.log_position, hidden=self.world.scale.hidden,
                       binary=model.task == "binary_classification",
                       steps=self.world.scale.train_steps,
                       seed=int(self.rng.integers(2**31)), defect=release.defect)
        artifact = Path("artifacts") / model.model_id / f"{release.snapshot_id}.pt2"
        self.exporter.export(model.model_id, result.net, self.root / artifact)
        program = torch.export.load(self.root / artifact)  # serve exactly what was saved
        self.modules[release.snapshot_id] = program.module()
        self.log_node[release.snapshot_id] = log_node_name(program)
        self.curves[release.snapshot_id] = (result.loss, result.grad_norm)

    # --- one day of traffic ---------------------------------------------------------------

    def _simulate_day(self, day: int) -> None:
        hours = np.arange(day * 24, day * 24 + 24)
        requests = generate_requests(self.world, hours, self.plan.effects, self.rng,
                                     self.plan.demand_dips)
        model_of = self._assign_models(requests)
        prediction = np.full(len(requests.ts), np.nan)
        for k, (model_id, model) in enumerate(self.world.models.items()):
            rows = np.flatnonzero(model_of == k)
            x = requests.served_features(rows, self.columns[model_id])
            self._training_partition(model_id, day, x, requests.label[rows])
            if day < 0:
                continue
            snapshots, arm = self.traffic.route(model_id, requests.ts[rows], self.rng)
            for j, snapshot in enumerate(snapshots):
                chosen = arm == j
                if chosen.any():
                    prediction[rows[chosen]] = predict(self.modules[snapshot], x[chosen])
                    self.served[snapshot] += [chosen.sum(), np.isnan(prediction[rows[chosen]]).sum()]
            self._log_samples(model_id, day, requests, rows, x, prediction[rows],
                              np.array(snapshots + [""])[arm])
        if day >= 0:
            self.topline.append(measure.topline(self.world, requests, prediction, hours, self.rng,
                                                self.plan.demand_dips))
            self.stats.append(measure.node_stats(self.world, requests, hours))

    def _assign_models(self, requests: Requests) -> np.ndarray:
        """Each request's model (index into ``world.models``), by the segment's traffic shares."""
        shares = np.array([[m.shares.get(s, 0.0) if m.product == p else 0.0
                            for m in self.world.models.values()] for p, s in self.world.segments])
        cumulative = np.cumsum(shares, axis=1)[requests.segment]
        return (self.rng.random(len(requests.ts))[:, None] >= cumulative).sum(axis=1)

    def _training_partition(self, model_id: str, day: int, x: np.ndarray, y: np.ndarray) -> None:
        """Keep a sample of the day's served examples with their labels as a training partition."""
        take = self.rng.choice(len(x), size=min(self.world.scale.train_rows, len(x)), replace=False)
        x, y = x[np.sort(take)], y[np.sort(take)]
        if (model_id, day) in self.plan.flipped_labels:
            y = 1.0 - y
        self.partitions[(model_id, day)] = (x, y)
        self.write_table(self.root, "training_data", {"label": y},
                    features=dict(zip(self.world.models[model_id].features, x.T)),
                    partition={"dataset_id": self.world.models[model_id].dataset_id,
                               "partition": iso(day * DAY)[:10]})

    def _log_samples(self, model_id, day, requests: Requests, rows, x, prediction, snapshot_ids):
        logged = self.rng.random(len(rows)) < self.world.scale.sample_rate
        rows, x = rows[logged], x[logged]
        ts = requests.ts[rows]
        delay = self.plan.label_delay.get(model_id, HOUR)
        arrived = ts + delay + self.rng.exponential(3 * HOUR, len(rows)) <= self.plan.end
        segment_names = np.array([s for _, s in self.world.segments])
        self.write_table(
            self.root, "serving_samples",
            {"ts": ts, "snapshot_id": snapshot_ids[logged],
             "request_id": np.char.add(f"r{day:03d}-", np.char.zfill(rows.astype(str), 6)),
             "segment": segment_names[requests.segment[rows]], "prediction": prediction[logged],
             "label": np.where(arrived, requests.label[rows], np.nan)},
            features=dict(zip(self.world.models[model_id].features, x.T)),
            partition={"model_id": model_id, "date": iso(day * DAY)[:10]},
        )

    # --- tables ---------------------------------------------------------------------------

    def _write_tables(self) -> dict:
        world, plan, root = self.world, self.plan, self.root
        segments = world.segments
        self.write_table(root, "models", _columns(
            [(m.model_id, m.product, s, m.task) for m in world.models.values() for s in m.shares],
            "model_id product segment task"))
        self.write_table(root, "model_features", _columns(
            [(m.model_id, i, f) for m in world.models.values() for i, f in enumerate(m.features)],
            "model_id position feature_name"))
        self.write_table(root, "features", _columns(
            [(f.name, f.node_id) for f in world.features.values()], "feature_name lineage_node_id"))
        self.write_table(root, "lineage_nodes", _columns(
            [(n, world.node_kind[n], world.node_pipeline[n]) for n in world.graph.nodes],
            "node_id kind pipeline_id"))
        self.write_table(root, "lineage_edges", _columns(list(world.graph.edges),
                                                    "upstream_id downstream_id"))
        self.write_table(root, "pipelines", _columns(
            [(p, o, t) for p, (o, t) in world.pipelines.items()], "pipeline_id orchestrator target"))
        self.write_table(root, "lineage_changes", _columns(
            [(c.ts, c.node_id, c.change_type, c.version, c.description) for c in plan.changes],
            "ts node_id change_type version description"))

        published = [r for r in self.releases if r.published < plan.end]
        self.write_table(root, "snapshots", _columns(
            [(r.model_id, r.snapshot_id, r.published, r.training_run_id,
              f"artifacts/{r.model_id}/{r.snapshot_id}.pt2") for r in published],
            "model_id snapshot_id published_at training_run_id artifact"))
        self.write_table(root, "training_runs", _columns(
            [(r.training_run_id, r.model_id, world.models[r.model_id].dataset_id,
              [iso(d * DAY)[:10] for d in r.partitions], r.published - 3 * HOUR,
              r.published - HOUR) for r in published],
            "training_run_id model_id dataset_id partitions started_at finished_at"))
        curves = [(r.training_run_id, *self.curves[r.snapshot_id]) for r in published]
        self.write_table(root, "training_metrics", {
            "training_run_id": np.concatenate([[run] * len(loss) for run, loss, _ in curves]),
            "step": np.concatenate([np.arange(len(loss)) for _, loss, _ in curves]),
            "loss": np.concatenate([loss for _, loss, _ in curves]),
            "grad_norm": np.concatenate([norm for _, _, norm in curves]),
        })
        changes = [c for model_changes in self.traffic.changes.values() for c in model_changes
                   if c.ts < plan.end]
        model_of = {r.snapshot_id: r.model_id for r in self.releases}
        self.write_table(root, "experiments", _columns(
            [(c.ts, c.experiment_id, model_of[c.snapshot_id], c.snapshot_id, s, c.fraction)
             for c in changes for s in world.models[model_of[c.snapshot_id]].shares],
            "ts experiment_id model_id snapshot_id segment traffic_fraction"))

        top = {k: np.concatenate([t[k] for t in self.topline]) for k in self.topline[0]}
        self.write_table(root, "topline_metrics", {
            "ts": top["hour"] * HOUR, "product": np.array([p for p, _ in segments])[top["segment"]],
            "segment": np.array([s for _, s in segments])[top["segment"]],
            "metric": top["metric"], "value": top["value"]})

        stats = {k: np.concatenate([s[k] for s in self.stats]) for k in self.stats[0]}
        self.write_table(root, "lineage_node_stats", measure.stat_rows(
            measure.stat_nodes(world), stats, plan.daily_stats, plan.unmeasured))

        column = {f: len(world.data_nodes) + j for j, f in enumerate(world.feature_names)}
        fired = {rule: alert for rule in plan.alert_rules
                 if (alert := measure.fire(rule, stats[rule.stat][:, column[rule.feature]]))}
        alerts = sorted(plan.alerts + list(fired.values()), key=lambda a: a.ts)
        self.write_table(root, "feature_alerts", _columns(
            [(a.ts, a.feature_name, a.alert_type, a.severity, a.detail) for a in alerts],
            "ts feature_name alert_type severity detail"))
        return fired


def _columns(rows: list[tuple], names: str) -> dict[str, list]:
    """Rows of tuples as columns named by the space-separated ``names``."""
    names_list = names.split()
    return {name: [row[i] for row in rows] for i, name in enumerate(names_list)}
