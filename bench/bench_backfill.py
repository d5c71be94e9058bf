"""The cost of a feature backfill through Dagster against its floor.

``backfill_features_demo_small``: ``hawkeye-dagster backfill --assets features --wait`` over
every model of the simulated ``demo`` world (small scale; 21 served days, 3 with
``--quick``) on a fresh ``DAGSTER_HOME`` with no daemon running, so the command drives the
backfill daemon's iterations itself and each run is a run worker process of its own, as
under ``dagster dev``: wall time from the command's start (Dagster's loading included) to the
backfill's end, and the runs it launched. The reference is the floor: the same statistics
(each model's reference window, then every day's hourly statistics and drift, daily and
hourly) computed in one Python loop calling the analysis functions directly, with no health
checks, no Dagster and nothing written. The lake is cached under ``bench/.work/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.run import record

REPO = Path(__file__).resolve().parents[1]
LAKE = REPO / "bench" / ".work" / "backfill-demo-small"
_DAY = pd.Timedelta("1D")


def _lake() -> Path:
    if not (LAKE / "models").exists():
        from hawkeye_dagster.simulate import simulate

        simulate(LAKE, scenario="demo", scale="small")
    return LAKE


def _floor(lake: Path, days: list[str]) -> float:
    """Seconds for the backfill's statistics in one loop, as ``feature_stats`` and
    ``feature_drift`` compute them."""
    from hawkeye_dagster.analysis.drift import drift_table
    from hawkeye_dagster.analysis.feature_health import learn_thresholds
    from hawkeye_dagster.analysis.feature_stats import PREDICTION
    from hawkeye_dagster.gather.serving_stats import (lake_hourly_stats, lake_reference,
                                                      model_features)
    from hawkeye_dagster.lake.open import open_lake
    from hawkeye_dagster.time_range import TimeRange

    started = time.perf_counter()
    reader = open_lake(lake=str(lake))
    for model_id in sorted(reader.read("models", columns=["model_id"])["model_id"].unique()):
        served = sorted(reader.read("serving_samples", columns=["date"],
                                    equals={"model_id": model_id})["date"].unique())
        first = pd.Timestamp(served[0], tz="UTC")
        reference = lake_reference(reader, model_id, TimeRange(first, first + 7 * _DAY))
        learn_thresholds(reference, [c for c in reference.columns if c != PREDICTION])
        columns = [*model_features(reader, model_id), PREDICTION]
        for day in days:
            start = pd.Timestamp(day, tz="UTC")
            stats = lake_hourly_stats(reader, model_id, TimeRange(start, start + _DAY), columns,
                                      reference.edges_for(columns))
            if stats is not None:
                drift_table(stats, reference)
                drift_table(stats, reference, by_hour=True)
    return time.perf_counter() - started


def run(quick: bool) -> list[dict]:
    import dagster as dg
    from dagster._core.storage.dagster_run import RunsFilter

    from hawkeye_dagster.assets.partitions import served_days
    from hawkeye_dagster.lake.open import open_lake

    lake = _lake()
    first, last = served_days(open_lake(lake=str(lake)))
    days = [f"{d:%Y-%m-%d}" for d in pd.date_range(first, last, freq="D")][:3 if quick else None]
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        home = Path(tmp, "dagster_home")
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {**os.environ, "DAGSTER_HOME": str(home), "HAWKEYE_HOME": tmp,
               "HAWKEYE_LAKE": str(lake)}
        started = time.perf_counter()
        done = subprocess.run(
            [str(Path(sys.executable).parent / "hawkeye-dagster"), "backfill", "--lake",
             str(lake), "--start", days[0], "--end", days[-1], "--assets", "features", "--wait"],
            env=env, cwd=REPO, capture_output=True, text=True)
        project_s = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"backfill exited {done.returncode}: {done.stderr[-2000:]}")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (backfill,) = instance.get_backfills()
            runs = instance.get_runs(filters=RunsFilter.for_backfill(backfill.backfill_id))
            partitions = len(instance.get_materialized_partitions(dg.AssetKey("feature_stats")))
            run_s = [r.end_time - r.start_time for r in
                     (instance.get_run_record_by_id(run.run_id) for run in runs)]
    models = partitions // len(days)
    return [record("backfill_features_demo_small", project_s, "one Python loop over days "
                   "and models calling the analyses (floor)", _floor(lake, days), {
                       "days": len(days), "models": models, "partitions": partitions,
                       "runs": len(runs), "run_s_total": sum(run_s),
                       "executed": "in-process daemon iterations, a process per run"})]
