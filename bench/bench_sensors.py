"""Sensor ticks against the size of the history they watch.

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
Quick mode runs the ticks at 1e3 and 1e4 rows of history only.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import dagster as dg
import numpy as np
import pandas as pd

from bench._sensor_data import (ROWS_PER_FILE, START, alert_lake, snapshot_lake, write_alerts,
                                write_snapshots)
from bench.run import record
from bench.timing import best_of
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.time_range import TimeRange

NEW_ALERTS = 100
NEW_SNAPSHOTS = 10


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
            results.append(record(
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
            results.append(record(
                f"snapshot_sensor_tick_vs_history_{history}", project_s,
                "full rescan of snapshots minus the known partitions", reference_s,
                {"history_snapshots": history, "history_files": history // ROWS_PER_FILE,
                 "new_snapshots": NEW_SNAPSHOTS, "artifacts_opened": opened.call_count}))
    return results


def run(quick: bool) -> list[dict]:
    """Quick: ticks at 1e3 and 1e4 rows of history (about a minute); full: up to 1e5
    snapshots and 1e6 alerts."""
    histories = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    alert_histories = histories if quick else (*histories, 1_000_000)
    return [*bench_alert_tick(alert_histories), *bench_snapshot_tick(histories)]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
