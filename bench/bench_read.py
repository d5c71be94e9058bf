"""Telemetry read benchmark: the common read, one model's serving samples for one day.

- ``read_serving_day``: ``ParquetLake.read_arrow("serving_samples",
  equals={"model_id": m}, time_range=<that day>)`` against plain
  ``pyarrow.parquet.read_table`` of the same files. The day holds 1M rows x 200
  float32 features in 4 files, as a writer would leave them (100k rows quick);
  other models and days sit beside it, as in a real lake, for the project's
  reader to prune. Target ratio (reference / project) >= 0.8.

The lake is written once and cached under ``bench/.work/`` (gitignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.timing import interleaved
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.time_range import TimeRange

WORK = Path(__file__).resolve().parent / ".work" / "read"
MODEL, DAY = "ranker v2", "2026-03-04"
FEATURES = 200
FILES = 4
REPEATS = 7


def _write_files(folder: Path, rows: int, day: str, seed: int) -> list[Path]:
    """``rows`` serving samples of one model-day in ``FILES`` files (written once)."""
    paths = [folder / f"part-{k}.parquet" for k in range(FILES)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(day, tz="UTC").value // 1000
    for k, path in enumerate(paths):
        n = rows // FILES
        ts = start + np.sort(rng.integers(0, 86_400 * 10**6, n))
        columns = {"ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                   "snapshot_id": pa.array(np.full(n, "s1")),
                   "request_id": pa.array(np.char.add(f"{k}-", np.arange(n).astype(str))),
                   "segment": pa.array(np.full(n, "main")),
                   "prediction": rng.random(n), "label": rng.random(n)}
        features = rng.standard_normal((n, FEATURES), dtype=np.float32)
        columns |= {f"feature {j}": features[:, j] for j in range(FEATURES)}
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.table(columns), tmp)
        tmp.rename(path)
    return paths


def _lake(rows: int) -> tuple[Path, list[Path]]:
    root = WORK / f"{rows}-rows"
    serving = root / "serving_samples"
    for other_day in ("2026-03-02", "2026-03-03", "2026-03-05"):
        _write_files(serving / f"model_id={MODEL}" / f"date={other_day}", 4_000, other_day, 1)
    _write_files(serving / "model_id=other" / f"date={DAY}", 4_000, DAY, 2)
    return root, _write_files(serving / f"model_id={MODEL}" / f"date={DAY}", rows, DAY, 0)


def run(quick: bool) -> list[dict]:
    rows = 100_000 if quick else 1_000_000
    root, files = _lake(rows)
    day = TimeRange.of(DAY, pd.Timestamp(DAY) + pd.Timedelta("1D"))

    def project() -> pa.Table:
        return ParquetLake(str(root)).read_arrow("serving_samples", equals={"model_id": MODEL},
                                                  time_range=day)

    def reference() -> pa.Table:
        return pq.read_table([str(f) for f in files])

    got, expected = project(), reference()  # also warms the page cache for both alike
    if got.num_rows != expected.num_rows or got.num_columns != expected.num_columns:
        raise AssertionError(f"reads differ: {got.shape} vs {expected.shape}")
    del got, expected
    best = interleaved({"project": project, "reference": reference}, REPEATS)
    (project_s, project_cpu), (reference_s, reference_cpu) = best["project"], best["reference"]
    return [{
        "name": "read_serving_day",
        "project_s": project_s,
        "reference": "pyarrow.parquet.read_table",
        "reference_s": reference_s,
        "ratio": reference_s / project_s,
        "params": {"rows": rows, "features": FEATURES, "files": FILES, "repeats": REPEATS,
                   "timing": "best of interleaved repeats",
                   "project_cpu_s": project_cpu, "reference_cpu_s": reference_cpu},
    }]


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
