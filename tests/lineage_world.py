"""A small synthetic lineage world with known answers, for the lineage, upstream and mitigation tests.

::

    s1 (dagster) ─┐
                  ├─> t1 (dagster) ─> x1 (airflow) ─┬─> nf1 (feature f1)
    s2 (none) ────┘                                 └─> nf2 (feature f2)
    s3 (airflow) ─> nf3 (feature f3, external pipeline)

Hourly statistics (``row_count`` with a daily cycle, ``null_fraction``,
``mean``) with 2% noise for 14 days from 2026-10-01.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

START = pd.Timestamp("2026-10-01", tz="UTC")
DAYS = 14
BASE = {"row_count": 1000.0, "null_fraction": 0.01, "mean": 5.0}


def lineage_tables() -> dict[str, pd.DataFrame]:
    return {
        "lineage_nodes": pd.DataFrame({
            "node_id": ["s1", "s2", "s3", "t1", "x1", "nf1", "nf2", "nf3"],
            "kind": ["source", "source", "source", "table", "transform", "feature", "feature",
                     "feature"],
            "pipeline_id": ["p_s1", None, "p_s3", "p_t1", "p_x1", "p_x1", "p_x1", "p_f3"]}),
        "lineage_edges": pd.DataFrame(
            [("s1", "t1"), ("s2", "t1"), ("t1", "x1"), ("x1", "nf1"), ("x1", "nf2"),
             ("s3", "nf3")], columns=["upstream_id", "downstream_id"]),
        "features": pd.DataFrame({"feature_name": ["f1", "f2", "f3"],
                                  "lineage_node_id": ["nf1", "nf2", "nf3"]}),
        "pipelines": pd.DataFrame({
            "pipeline_id": ["p_s1", "p_s3", "p_t1", "p_x1", "p_f3"],
            "orchestrator": ["dagster", "airflow", "dagster", "airflow", "external"],
            "target": ["s1_sensor", "s3_dag", "t1_schedule", "x1_dag", "vendor export"]}),
    }


def node_stats(nodes=("s1", "s2", "s3", "t1", "x1", "nf1", "nf2", "nf3"), days: int = DAYS,
               seed: int = 0) -> pd.DataFrame:
    """Clean hourly statistics in the contract's long ``lineage_node_stats`` shape."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(START, periods=24 * days, freq="h")
    daily = 1 + 0.3 * np.sin(times.hour.to_numpy() / 24 * 2 * np.pi)
    frames = []
    for node in nodes:
        for stat, base in BASE.items():
            cycle = daily if stat == "row_count" else 1.0
            value = base * cycle * (1 + 0.02 * rng.standard_normal(len(times)))
            frames.append(pd.DataFrame({"ts": times, "node_id": node, "stat": stat,
                                        "value": value}))
    return pd.concat(frames, ignore_index=True)


def shift(stats: pd.DataFrame, nodes, stat: str, start: str, fn) -> pd.DataFrame:
    """Apply ``fn`` to ``stat`` of ``nodes`` from ``start`` on (a new frame)."""
    stats = stats.copy()
    rows = (stats["node_id"].isin(list(nodes)) & (stats["stat"] == stat)
            & (stats["ts"] >= pd.Timestamp(start, tz="UTC")))
    stats.loc[rows, "value"] = fn(stats.loc[rows, "value"].to_numpy())
    return stats


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def write_lake(root, tables: dict[str, pd.DataFrame] | None = None) -> None:
    """A Parquet lake of this world for the Dagster tests: the lineage tables, statistics in
    which ``s1``'s null fraction jumps at 2026-10-11 05:00 (inherited below it), an old change,
    and two models (``m1`` reads f1 and f2, ``m2`` reads f3) with their training runs.
    ``tables`` overrides or adds tables."""
    stats = shift(node_stats(), ["s1"], "null_fraction", "2026-10-11 05:00", lambda v: v * 0 + 0.4)
    stats = shift(stats, ["t1", "x1", "nf1", "nf2"], "null_fraction", "2026-10-11 05:00",
                  lambda v: v * 0 + 0.2)
    tables = lineage_tables() | {
        "lineage_node_stats": stats,
        "lineage_changes": pd.DataFrame({
            "ts": [utc("2026-10-02")], "node_id": ["s3"], "change_type": ["config"],
            "version": ["1"], "description": ["old"]}),
        "model_features": pd.DataFrame({
            "model_id": ["m1", "m1", "m2"], "position": pd.array([0, 1, 0], "int32"),
            "feature_name": ["f1", "f2", "f3"]}),
        "training_runs": pd.DataFrame({
            "training_run_id": ["r1", "r2", "r3"], "model_id": ["m1", "m1", "m2"],
            "dataset_id": ["d1", "d1", "d2"],
            "partitions": [["2026-10-05"], ["2026-10-08", "2026-10-09"], ["2026-10-07"]],
            "started_at": [utc("2026-10-06"), utc("2026-10-10"), utc("2026-10-08")],
            "finished_at": [utc("2026-10-06 01:00"), utc("2026-10-10 01:00"),
                            utc("2026-10-08 01:00")]}),
    } | (tables or {})
    for name, frame in tables.items():
        write_table(frame, root / name)


def write_table(frame: pd.DataFrame, folder, name: str = "part-0.parquet") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / name, index=False)


def open_traced_incident(storage, resources: dict, instance) -> str:
    """An incident on f1 and f2, stored and traced upstream (to s1) by materializing
    ``upstream_root_cause`` on ``instance``; returns its id."""
    import dagster as dg

    from hawkeye_dagster.assets.lineage import upstream_root_cause
    from hawkeye_dagster.incidents import INCIDENTS_DIR, Incident

    incident = Incident(entry={"kind": "feature_alert", "feature": "f1",
                               "features": {"f1": "2026-10-11T07:00:00+00:00",
                                            "f2": "2026-10-11T07:00:00+00:00"}},
                        start="2026-10-04T08:00:00+00:00", end="2026-10-11T08:00:00+00:00")
    key = incident.incident_id
    storage.write_json(incident.to_json(), INCIDENTS_DIR, f"{key}.json")
    instance.add_dynamic_partitions("incident", [key])
    assert dg.materialize([upstream_root_cause], partition_key=key, instance=instance,
                          resources=resources).success
    return key
