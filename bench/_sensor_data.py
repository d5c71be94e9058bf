"""Lakes with a long history for the sensor benchmarks: Parquet files of a fixed number of
rows, so a tick's cost can be told apart from the history's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.bench_lineage import lineage_tables

#: rows per history file (one file per batch a producer writes)
ROWS_PER_FILE = 100
START = pd.Timestamp("2026-01-01", tz="UTC")


def write_alerts(folder: Path, name: str, features: np.ndarray, start: pd.Timestamp, rng) -> None:
    """``len(features)`` alerts within the hour after ``start``, as one file."""
    ts = start + pd.to_timedelta(np.sort(rng.integers(0, 3600, len(features))), unit="s")
    pd.DataFrame({"ts": ts, "feature_name": features, "alert_type": "null_rate",
                  "severity": rng.choice(["info", "warning", "critical"], len(features)),
                  "detail": "bench"}).to_parquet(folder / f"{name}.parquet", index=False)


def alert_lake(lake: Path, history: int, n_nodes: int, rng) -> np.ndarray:
    """A lake with a lineage graph of ``n_nodes`` and ``history`` alerts, one file an hour.

    Returns the feature names (for new alerts); the history ends before
    ``START + history // ROWS_PER_FILE`` hours.
    """
    tables = lineage_tables(n_nodes, 3 * n_nodes)
    tables["pipelines"] = pd.DataFrame(columns=["pipeline_id", "orchestrator", "target"])
    # the contract's model tables, empty: no model consumes these features
    tables["model_features"] = pd.DataFrame({"model_id": pd.Series(dtype=str),
                                             "position": pd.Series(dtype="int32"),
                                             "feature_name": pd.Series(dtype=str)})
    tables["training_runs"] = pd.DataFrame({
        "training_run_id": pd.Series(dtype=str), "model_id": pd.Series(dtype=str),
        "dataset_id": pd.Series(dtype=str), "partitions": pd.Series(dtype=object),
        "started_at": pd.Series(dtype="datetime64[us, UTC]"),
        "finished_at": pd.Series(dtype="datetime64[us, UTC]")})
    for name, frame in tables.items():
        (lake / name).mkdir(parents=True)
        frame.to_parquet(lake / name / "part-0.parquet", index=False)
    features = tables["features"]["feature_name"].to_numpy()
    (lake / "feature_alerts").mkdir()
    for i in range(history // ROWS_PER_FILE):
        write_alerts(lake / "feature_alerts", f"h{i:05d}", rng.choice(features, ROWS_PER_FILE),
                     START + pd.Timedelta(hours=i), rng)
    return features


def write_snapshots(folder: Path, name: str, first: int, count: int,
                    start: pd.Timestamp) -> list[str]:
    """``count`` snapshot rows (ids ``s<first>``..., one a minute from ``start``) as one file,
    their artifacts absent. Returns the ids."""
    ids = [f"s{i:07d}" for i in range(first, first + count)]
    pd.DataFrame({"model_id": [f"m{i % 50}" for i in range(first, first + count)],
                  "snapshot_id": ids,
                  "published_at": start + pd.to_timedelta(np.arange(count), unit="min"),
                  "training_run_id": None,
                  "artifact": [f"absent/{i}.pt2" for i in ids]}).to_parquet(
        folder / f"{name}.parquet", index=False)
    return ids


def snapshot_lake(lake: Path, history: int) -> list[str]:
    """A lake whose ``snapshots`` table holds ``history`` rows, one file a day; returns the ids."""
    (lake / "snapshots").mkdir(parents=True)
    ids = []
    for i in range(history // ROWS_PER_FILE):
        ids += write_snapshots(lake / "snapshots", f"h{i:05d}", i * ROWS_PER_FILE,
                               ROWS_PER_FILE, START + pd.Timedelta(days=i))
    return ids
