"""Sensor ticks against the size of the history they watch, and snapshot diagnostics throughput.

- ``alert_sensor_tick_vs_history_<rows>``: one tick of ``feature_alert_sensor`` (evaluated
  with ``build_sensor_context`` on a real ephemeral instance, with the cursor of the previous
  tick) that finds 100 new alerts (one new file) next to 1e3..1e6 alerts already read (100
  per file), against a full rescan: reading the whole ``feature_alerts`` table, as a sensor
  without a cursor does every tick. ``watermark_reread_s`` is the ts-filtered re-read through
  the lake reader (what a watermark-only sensor does). The tick should stay flat.
- ``snapshot_sensor_tick_vs_history_<rows>``: one tick of ``snapshot_publication_sensor``
  that finds 10 new snapshots next to 1e3..1e5 already registered as partitions, against a
  full rescan of ``snapshots`` minus the known partitions. The artifacts do not exist, and
  the tick is checked not to open any.
- ``snapshot_diagnostics_throughput``: the snapshot diagnostics assets materialized for N
  snapshots of the simulated ``demo`` lake, one at a time in this process (the reference)
  against two worker processes; ``params`` has runs per hour at concurrency 1 and 2.

Quick mode runs the ticks at 1e3 and 1e4 rows of history only.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import dagster as dg
import numpy as np
import pandas as pd

from bench._sensor_data import (ROWS_PER_FILE, START, alert_lake, snapshot_lake, write_alerts,
                                write_snapshots)
from bench.timing import best_of
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.lake.reader import TimeRange
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource

NEW_ALERTS = 100
NEW_SNAPSHOTS = 10



def _result(name, project_s, reference, reference_s, params) -> dict:
    return {"name": name, "project_s": project_s, "reference": reference,
            "reference_s": reference_s, "ratio": reference_s / project_s, "params": params}


def bench_alert_tick(histories, n_nodes: int = 2_000) -> list[dict]:
    from hawkeye_dagster.assets.lineage import upstream_root_cause
    from hawkeye_dagster.sensors.feature_alerts import feature_alert_sensor

    rng = np.random.default_rng(2)
    results = []
    for history in histories:
        with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
            lake = Path(tmp) / "lake"
            features = alert_lake(lake, history, n_nodes, rng)
            resources = {"telemetry": TelemetrySource(lake=str(lake)),
                         "storage": HawkeyeStorage(root=str(Path(tmp) / "out"))}
            defs = dg.Definitions(assets=[upstream_root_cause], sensors=[feature_alert_sensor],
                                  resources=resources)

            def tick(cursor):
                with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                             resources=resources) as context:
                    return feature_alert_sensor(context)

            cursor = tick(None).cursor                     # reads the history, warms the graph
            newest = START + pd.Timedelta(hours=history // ROWS_PER_FILE + 24)
            write_alerts(lake / "feature_alerts", "new", rng.choice(features, NEW_ALERTS),
                         newest, rng)
            started = time.perf_counter()
            result = tick(cursor)
            project_s = time.perf_counter() - started
            assert result.run_requests, "the tick found no incident in the new alerts"
            reference_s, rows = best_of(lambda: open_lake(str(lake)).read("feature_alerts"),
                                       repeat=1)
            assert len(rows) == history + NEW_ALERTS
            watermark_s, recent = best_of(lambda: open_lake(str(lake)).read(
                "feature_alerts", time_range=TimeRange(start=newest)), repeat=1)
            assert len(recent) == NEW_ALERTS
            results.append(_result(
                f"alert_sensor_tick_vs_history_{history}", project_s,
                "full rescan of feature_alerts per tick", reference_s,
                {"history_alerts": history, "history_files": history // ROWS_PER_FILE,
                 "new_alerts": NEW_ALERTS, "graph_nodes": n_nodes,
                 "run_requests": len(result.run_requests), "watermark_reread_s": watermark_s}))
    return results


def bench_snapshot_tick(histories) -> list[dict]:
    from hawkeye_dagster.assets.partitions import snapshot_partitions
    from hawkeye_dagster.sensors.snapshots import snapshot_publication_sensor

    results = []
    for history in histories:
        with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
            lake = Path(tmp) / "lake"
            instance.add_dynamic_partitions(snapshot_partitions.name, snapshot_lake(lake, history))
            resources = {"telemetry": TelemetrySource(lake=str(lake))}
            defs = dg.Definitions(sensors=[snapshot_publication_sensor], resources=resources)
            reader_class = type(open_lake(str(lake)))

            def tick(cursor):
                with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                             resources=resources) as context:
                    return snapshot_publication_sensor(context)

            cursor = tick(None).cursor                     # reads the history
            new = write_snapshots(lake / "snapshots", "new", history, NEW_SNAPSHOTS,
                                  START + pd.Timedelta(days=history // ROWS_PER_FILE + 1))
            with mock.patch.object(reader_class, "open_artifact",
                                   side_effect=AssertionError("the tick opened an artifact")) \
                    as opened:
                started = time.perf_counter()
                result = tick(cursor)
                project_s = time.perf_counter() - started
            assert opened.call_count == 0
            assert sorted(r.partition_key for r in result.run_requests) == new

            def rescan():
                rows = open_lake(str(lake)).read("snapshots", columns=[
                    "snapshot_id", "model_id", "published_at"])
                known = set(instance.get_dynamic_partitions(snapshot_partitions.name))
                return rows[~rows["snapshot_id"].isin(known)]

            reference_s, unseen = best_of(rescan, repeat=1)
            assert sorted(unseen["snapshot_id"]) == new
            results.append(_result(
                f"snapshot_sensor_tick_vs_history_{history}", project_s,
                "full rescan of snapshots minus the known partitions", reference_s,
                {"history_snapshots": history, "history_files": history // ROWS_PER_FILE,
                 "new_snapshots": NEW_SNAPSHOTS, "artifacts_opened": opened.call_count}))
    return results


_worker: dict = {}


def _start_worker() -> None:
    """Per process: one thread for torch, one ephemeral instance for its runs."""
    import torch

    torch.set_num_threads(1)
    _worker["instance"] = dg.DagsterInstance.ephemeral()


def _diagnose(job: tuple[str, str, str]) -> bool:
    """Materialize one snapshot's diagnostics; whether the run succeeded."""
    from hawkeye_dagster.assets.partitions import snapshot_partitions
    from hawkeye_dagster.assets.snapshots import SNAPSHOT_DIAGNOSTICS

    lake, out, snapshot_id = job
    instance = _worker["instance"]
    instance.add_dynamic_partitions(snapshot_partitions.name, [snapshot_id])
    return dg.materialize(SNAPSHOT_DIAGNOSTICS, partition_key=snapshot_id, instance=instance,
                          resources={"telemetry": TelemetrySource(lake=lake),
                                     "storage": HawkeyeStorage(root=out)},
                          raise_on_error=False).success


def _ready(_) -> int:
    time.sleep(0.5)  # long enough that each worker takes one
    return os.getpid()


def bench_throughput(n_snapshots: int) -> dict:
    from hawkeye_dagster.simulate import simulate

    with tempfile.TemporaryDirectory() as tmp:
        lake = Path(tmp) / "lake"
        simulate(lake, scenario="demo", seed=0, scale="small")
        snapshots = open_lake(str(lake)).read("snapshots", columns=["snapshot_id"])
        ids = snapshots["snapshot_id"].tolist()[-2 * n_snapshots:]
        sequential, parallel = ids[:n_snapshots], ids[n_snapshots:]
        _start_worker()
        _diagnose((str(lake), str(Path(tmp) / "warm"), sequential[0]))  # imports, caches
        started = time.perf_counter()
        ok_1 = [_diagnose((str(lake), str(Path(tmp) / "c1"), s)) for s in sequential]
        reference_s = (time.perf_counter() - started) / len(sequential)
        context = multiprocessing.get_context("spawn")
        with context.Pool(2, initializer=_start_worker) as pool:
            assert len(set(pool.map(_ready, range(2), chunksize=1))) == 2
            pool.map(_diagnose, [(str(lake), str(Path(tmp) / "warm2"), s) for s in ids[:2]],
                     chunksize=1)
            started = time.perf_counter()
            ok_2 = pool.map(_diagnose, [(str(lake), str(Path(tmp) / "c2"), s) for s in parallel],
                            chunksize=1)
            project_s = (time.perf_counter() - started) / len(parallel)
            pool.close()  # let the workers exit on their own, not terminated mid-get
            pool.join()
    return _result("snapshot_diagnostics_throughput", project_s,
                   "the same runs one at a time in one process", reference_s,
                   {"snapshots_per_mode": n_snapshots, "lake": "demo/small",
                    "runs_per_hour_c1": 3600 / reference_s, "runs_per_hour_c2": 3600 / project_s,
                    "succeeded_c1": sum(ok_1), "succeeded_c2": sum(ok_2),
                    "cpu_count": os.cpu_count()})


def run(quick: bool) -> list[dict]:
    """Quick: ticks at 1e3 and 1e4 rows of history (about a minute); full: up to 1e5
    snapshots and 1e6 alerts, and the diagnostics throughput."""
    if quick:
        histories = (1_000, 10_000)
        return [*bench_alert_tick(histories), *bench_snapshot_tick(histories)]
    histories = (1_000, 10_000, 100_000)
    return [*bench_alert_tick((*histories, 1_000_000)), *bench_snapshot_tick(histories),
            bench_throughput(6)]


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
