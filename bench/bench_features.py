"""Features benchmarks: statistics + drift vs Evidently, and a scaling curve.

- ``feature_drift_vs_evidently``: a day partition (full: 1M rows x 200
  float32 features; a tenth of them shifted by 0.05 to 0.25 standard
  deviations, around the 0.1 threshold) against Evidently's ``DataDriftPreset``
  on the same reference and current data. Evidently profiles the reference
  inside its report, so our time counts the reference profile too
  (``project_s = reference_profile_s + day_s``); ``ratio_reference_reused`` is
  the steady state of a monitor that profiles the reference once and scores
  every day against it. What is compared is not the same arithmetic: its
  default test for numeric columns of more than 1000 rows is the normalized
  Wasserstein distance on the raw values; ours is the same distance on the
  binned statistics (30 equal-frequency bins of the reference, error bounded
  by :mod:`hawkeye_dagster.analysis.drift`), plus PSI, Jensen-Shannon, KS and
  hourly drift. So the drifted / not-drifted verdict at the 0.1 threshold is
  compared column by column (``verdicts_agree``, ``disagreeing_columns``), and
  ``max_abs_score_difference`` is the largest gap between the two distances.
  Evidently runs in its own virtual environment (``bench/.work/evidently-venv``,
  created if missing: it needs pandas < 3) as a subprocess that times only its
  report computation, over column chunks so its memory stays bounded (the
  per-column tests are independent). Our peak memory (tracemalloc, numpy
  included) is reported against the partition's in-memory size; our day is the
  best of three (full run), the reference profile and Evidently a single run
  (it takes tens of minutes).
- ``feature_stats_scaling rows=R features=F``: our time against rows and
  features (no reference tool: ``ratio`` is empty).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from bench.timing import best_of
from hawkeye_dagster.analysis.drift import THRESHOLDS, drift_table
from hawkeye_dagster.analysis.feature_stats import hourly_stats, reference_profile

WORK = Path(__file__).resolve().parent / ".work"
EVIDENTLY_VENV = WORK / "evidently-venv"
DAY = pd.Timestamp("2026-03-04", tz="UTC")
EVIDENTLY_CHUNK = 20

_EVIDENTLY_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference = pd.read_parquet(sys.argv[1])
    current = pd.read_parquet(sys.argv[2])
    chunk = int(sys.argv[3])
    columns = [c for c in current.columns if c != "ts"]
    seconds, verdicts = 0.0, {}
    for i in range(0, len(columns), chunk):
        part = columns[i:i + chunk]
        definition = DataDefinition(numerical_columns=part)
        cur = Dataset.from_pandas(current[part], data_definition=definition)
        ref = Dataset.from_pandas(reference[part], data_definition=definition)
        started = time.perf_counter()
        result = Report([DataDriftPreset()]).run(cur, ref).dict()
        seconds += time.perf_counter() - started
        for metric in result["metrics"]:
            config = metric.get("config", {})
            if config.get("type", "").endswith("ValueDrift"):
                verdicts[config["column"]] = {"score": metric["value"],
                                              "threshold": config["threshold"],
                                              "method": config["method"]}
    print(json.dumps({"seconds": seconds, "columns": verdicts}))
""")


def _day(rows: int, features: int, seed: int, day: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """``rows`` standard-normal float32 features; the first tenth shifted by ``shift`` times
    0.25 .. 1.25 (so with ``shift=0.2`` their normalized Wasserstein distances spread from
    0.05 to 0.25, around the 0.1 threshold)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, features), dtype=np.float32)
    drifting = features // 10
    values[:, :drifting] += (shift * np.linspace(0.25, 1.25, drifting)).astype(np.float32)
    frame = pd.DataFrame(values, columns=[f"f{i}" for i in range(features)], copy=False)
    seconds = np.sort(rng.integers(0, 86400, rows))
    frame.insert(0, "ts", DAY + pd.Timedelta(days=day) + pd.to_timedelta(seconds, unit="s"))
    return frame


def _evidently_python() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(EVIDENTLY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "evidently", "pandas<3"],
                       check=True)
    return python


def _evidently_seconds(reference: pd.DataFrame, current: pd.DataFrame) -> dict:
    WORK.mkdir(exist_ok=True)
    ref_path, cur_path = WORK / "drift_reference.parquet", WORK / "drift_current.parquet"
    reference.drop(columns="ts").to_parquet(ref_path)
    current.drop(columns="ts").to_parquet(cur_path)
    try:
        out = subprocess.run([str(_evidently_python()), "-c", _EVIDENTLY_SCRIPT, str(ref_path),
                              str(cur_path), str(EVIDENTLY_CHUNK)],
                             check=True, capture_output=True, text=True)
    finally:
        ref_path.unlink(missing_ok=True)
        cur_path.unlink(missing_ok=True)
    return json.loads(out.stdout.strip().splitlines()[-1])



def _ours(current: pd.DataFrame, reference, columns: list[str],
          repeats: int = 1) -> tuple[float, int, pd.DataFrame]:
    """Best seconds and peak extra bytes of statistics + daily and hourly drift of a partition."""
    def once() -> pd.DataFrame:
        stats = hourly_stats(current, columns, reference.edges)
        drift_table(stats, reference, by_hour=True)
        return drift_table(stats, reference)

    tracemalloc.start()
    drift = once()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()  # tracing slows allocation down: the timed calls run without it
    seconds, _ = best_of(once, repeats)
    return seconds, peak, drift


def drift_vs_evidently(rows: int, features: int, repeats: int) -> dict:
    """Reference work counted on both sides: our reference profile plus a day's statistics
    and drift, against Evidently's report (which profiles the reference inside it)."""
    reference_frame = _day(rows, features, seed=1)
    columns = [c for c in reference_frame.columns if c != "ts"]
    reference_s, reference = best_of(lambda: reference_profile(reference_frame, columns), 1)
    current = _day(rows, features, seed=2, day=1, shift=0.2)
    seconds, peak, drift = _ours(current, reference, columns, repeats)
    size = current.memory_usage(deep=True).sum()
    evidently = _evidently_seconds(reference_frame, current)
    theirs = pd.DataFrame.from_dict(evidently["columns"], orient="index")
    ours = drift.set_index("column")["wasserstein_norm"].reindex(theirs.index)
    ours_drifted = ours >= THRESHOLDS["wasserstein_norm"]
    theirs_drifted = theirs["score"] >= theirs["threshold"]  # a distance: drift at or above
    disagree = sorted(theirs.index[ours_drifted != theirs_drifted])
    project_s = reference_s + seconds
    return {
        "name": "feature_drift_vs_evidently", "project_s": project_s,
        "reference": "Evidently DataDriftPreset (reference profiled inside, as ours is counted)",
        "reference_s": evidently["seconds"], "ratio": evidently["seconds"] / project_s,
        "params": {"rows": rows, "features": features, "reference_profile_s": reference_s,
                   "day_s": seconds,
                   "ratio_reference_reused": evidently["seconds"] / seconds,
                   "methods_evidently": ", ".join(sorted(set(theirs["method"]))),
                   "drifted_ours_wasserstein": int(ours_drifted.sum()),
                   "drifted_evidently": int(theirs_drifted.sum()),
                   "verdicts_agree": f"{len(theirs) - len(disagree)}/{len(theirs)}",
                   "disagreeing_columns": ", ".join(disagree) or "none",
                   "max_abs_score_difference": float((ours - theirs["score"]).abs().max()),
                   "peak_memory_x_partition": (size + peak) / size,
                   "partition_mb": size / 1e6,
                   "evidently_column_chunks": EVIDENTLY_CHUNK, "ours_best_of": repeats},
    }


def scaling(sizes: list[tuple[int, int]]) -> list[dict]:
    results = []
    for rows, features in sizes:
        reference_frame = _day(min(rows, 100_000), features, seed=3)
        columns = [c for c in reference_frame.columns if c != "ts"]
        reference = reference_profile(reference_frame, columns)
        current = _day(rows, features, seed=4, day=1, shift=0.1)
        seconds, peak, _ = _ours(current, reference, columns)
        results.append({
            "name": f"feature_stats_scaling rows={rows} features={features}", "project_s": seconds,
            "reference": "none (scaling curve)", "reference_s": None, "ratio": None,
            "params": {"rows": rows, "features": features,
                       "ns_per_value": seconds / (rows * features) * 1e9,
                       "peak_extra_mb": peak / 1e6},
        })
    return results


#: rows of the drift comparison's day at each scale (Evidently takes ~12 minutes on 1M)
DRIFT_ROWS = {"full": 1_000_000, "reduced": 200_000}


def run(quick: bool, scale: str = "full") -> list[dict]:
    if quick:
        return [
            drift_vs_evidently(100_000, 20, repeats=1),
            *scaling([(10_000, 10), (100_000, 10), (10_000, 100)]),
        ]
    drift = drift_vs_evidently(DRIFT_ROWS[scale], 200, repeats=3)
    drift["params"]["scale"] = scale
    return [
        drift,
        *scaling([(10_000, 50), (100_000, 50), (1_000_000, 50),
                  (100_000, 10), (100_000, 100), (100_000, 1000)]),
    ]
