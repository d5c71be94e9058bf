"""A small valid telemetry lake, written with plain pyarrow, for tests to read and to break.

``lake_tables()`` gives every contract table as Arrow (``serving_samples`` and
``training_data`` as one table per model / dataset, each with its own feature
columns); edit them and hand them to ``write_lake(root, tables)``. Ids and
feature names carry spaces, dots, quotes, dashes and non-ASCII letters, as the
contract allows. ``write_lake(root, tables, encoding=seed)`` stores the same
tables with any encoding freedom of the contract (see :mod:`reencode`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import uuid
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hawkeye_dagster.contract import TABLES

START = pd.Timestamp("2026-03-01", tz="UTC")
DAYS = ("2026-03-01", "2026-03-02")
RANKER, ADS = "ranker", "ads ctr.v2-ü"
FEATURES = {RANKER: ["clicks.7d", "user's age", "größe"], ADS: ["clicks.7d", "dwell time"]}
DATASETS = {RANKER: "feed data", ADS: "ads data"}
TRAIN_PARTITIONS = ("2026-02-27", "2026-02-28")
SNAPSHOTS = {"ranker@1": RANKER, "ranker@2": RANKER, "ads@1": ADS}
TS = pa.timestamp("us", tz="UTC")
PG_URL = os.environ.get("HAWKEYE_TEST_PG_URL",
                        "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def _ts(values) -> pa.Array:
    return pa.array(pd.DatetimeIndex(values).as_unit("us"), TS)


@functools.lru_cache(maxsize=None)
def snapshot_bytes(n_features: int, task: str, seed: int = 0) -> bytes:
    """A ``torch.export`` program ``[batch, n_features] -> [batch]``, saved as ``.pt2`` bytes."""
    import torch

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(n_features, 1)

        def forward(self, x):
            out = self.layer(x).squeeze(-1)
            return torch.sigmoid(out) if task == "binary_classification" else out

    torch.manual_seed(seed)
    program = torch.export.export(Linear(), (torch.zeros(4, n_features),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _serving(model_id: str, rng: np.random.Generator) -> pa.Table:
    ts = pd.date_range(START, periods=48 * 3, freq="20min")
    n = len(ts)
    snapshot = np.where(np.arange(n) < n // 2, "ranker@1", "ranker@2") if model_id == RANKER \
        else np.full(n, "ads@1")
    columns = {
        "model_id": pa.array([model_id] * n),
        "date": pa.array(ts.strftime("%Y-%m-%d")),
        "ts": _ts(ts),
        "snapshot_id": pa.array(snapshot),
        "request_id": pa.array([f"{model_id}/{i}" for i in range(n)]),
        "segment": pa.array(["main"] * n),
        "prediction": pa.array(rng.random(n)),
        "label": pa.array(np.where(np.arange(n) % 5 == 0, np.nan, rng.random(n).round()),
                          from_pandas=True),
    }
    for name in FEATURES[model_id]:
        columns[name] = pa.array(rng.normal(size=n).astype(np.float32))
    return pa.table(columns)


def _training(model_id: str, rng: np.random.Generator) -> pa.Table:
    n = 40
    columns = {"dataset_id": pa.array([DATASETS[model_id]] * n),
               "partition": pa.array(np.repeat(TRAIN_PARTITIONS, n // 2)),
               "label": pa.array(rng.random(n).round())}
    for name in FEATURES[model_id]:
        columns[name] = pa.array(rng.normal(size=n).astype(np.float32))
    return pa.table(columns)


def lake_tables(seed: int = 0) -> dict[str, pa.Table | dict[str, pa.Table]]:
    """Every contract table of a two-model world that follows the contract."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range(START, periods=48, freq="h")
    nodes = {"raw.clicks": ("source", "raw_ingest"), "tbl clicks": ("table", "clicks_etl"),
             "clicks.7d": ("feature", "clicks_etl"), "user's age": ("feature", "profile_etl"),
             "größe": ("feature", "profile_etl"), "dwell time": ("feature", "clicks_etl")}
    edges = [("raw.clicks", "tbl clicks"), ("tbl clicks", "clicks.7d"),
             ("tbl clicks", "dwell time")]
    stats = [(h, node, stat) for h in hours for node in nodes
             for stat in ("row_count", "null_fraction", "mean")]
    topline = [(h, p, "main", m) for h in hours for p in ("feed", "ads")
               for m in ("engagement", "latency_lower_is_better")]
    runs = {"run 1": RANKER, "run 2": RANKER, "run-ads": ADS}
    return {
        "topline_metrics": pa.table({
            "ts": _ts([t[0] for t in topline]), "product": [t[1] for t in topline],
            "segment": [t[2] for t in topline], "metric": [t[3] for t in topline],
            "value": rng.normal(10, 1, len(topline))}),
        "models": pa.table({"model_id": [RANKER, ADS, RANKER], "product": ["feed", "ads", "ads"],
                            "segment": ["main", "main", "main"],
                            "task": ["binary_classification", "regression",
                                     "binary_classification"]}),
        "model_features": pa.table({
            "model_id": [m for m in FEATURES for _ in FEATURES[m]],
            "position": pa.array([i for m in FEATURES for i in range(len(FEATURES[m]))],
                                 pa.int32()),
            "feature_name": [f for m in FEATURES for f in FEATURES[m]]}),
        "experiments": pa.table({
            "ts": _ts([START, START + pd.Timedelta("1D"), START + pd.Timedelta("1D"), START]),
            "experiment_id": ["ranker base", "ranker base", "ranker v2 ramp", "ads base"],
            "model_id": [RANKER, RANKER, RANKER, ADS],
            "snapshot_id": ["ranker@1", "ranker@1", "ranker@2", "ads@1"],
            "segment": ["main"] * 4, "traffic_fraction": [1.0, 0.5, 0.5, 1.0]}),
        "snapshots": pa.table({
            "model_id": list(SNAPSHOTS.values()), "snapshot_id": list(SNAPSHOTS),
            "published_at": _ts([START - pd.Timedelta("2D"), START + pd.Timedelta("20h"),
                                 START - pd.Timedelta("2D")]),
            "training_run_id": ["run 1", "run 2", "run-ads"],
            "artifact": [f"artifacts/{s}.pt2" for s in SNAPSHOTS]}),
        "serving_samples": {m: _serving(m, rng) for m in FEATURES},
        "features": pa.table({"feature_name": [n for n, (k, _) in nodes.items() if k == "feature"],
                              "lineage_node_id": [n for n, (k, _) in nodes.items()
                                                  if k == "feature"]}),
        "lineage_nodes": pa.table({"node_id": list(nodes), "kind": [k for k, _ in nodes.values()],
                                   "pipeline_id": [p for _, p in nodes.values()]}),
        "lineage_edges": pa.table({"upstream_id": [u for u, _ in edges],
                                   "downstream_id": [d for _, d in edges]}),
        "lineage_node_stats": pa.table({
            "ts": _ts([s[0] for s in stats]), "node_id": [s[1] for s in stats],
            "stat": [s[2] for s in stats], "value": rng.random(len(stats))}),
        "lineage_changes": pa.table({"ts": _ts([START + pd.Timedelta("30h")]),
                                     "node_id": ["tbl clicks"], "change_type": ["code"],
                                     "version": ["v2"], "description": ["dedupe clicks"]}),
        "pipelines": pa.table({"pipeline_id": ["raw_ingest", "clicks_etl", "profile_etl"],
                               "orchestrator": ["external", "dagster", "airflow"],
                               "target": ["kafka", "clicks_schedule", "profile_dag"]}),
        "feature_alerts": pa.table({"ts": _ts([START + pd.Timedelta("31h")]),
                                    "feature_name": ["clicks.7d"], "alert_type": ["null_rate"],
                                    "severity": ["warning"], "detail": ['null rate "high"']}),
        "training_runs": pa.table({
            "training_run_id": list(runs), "model_id": list(runs.values()),
            "dataset_id": [DATASETS[m] for m in runs.values()],
            "partitions": pa.array([list(TRAIN_PARTITIONS)] * 3, pa.list_(pa.string())),
            "started_at": _ts([START - pd.Timedelta("3D")] * 3),
            "finished_at": _ts([START - pd.Timedelta("2D")] * 3)}),
        "training_metrics": pa.table({
            "training_run_id": [r for r in runs for _ in range(5)],
            "step": pa.array([s for _ in runs for s in range(5)], pa.int64()),
            "loss": rng.random(15), "grad_norm": rng.random(15)}),
        "training_data": {DATASETS[m]: _training(m, rng) for m in FEATURES},
    }


def write_lake(root: str | Path, tables: dict | None = None, *, files_per_partition: int = 1,
               keys_in_files: bool = False, artifacts: bool = True, encoding=None) -> Path:
    """Write ``tables`` (default :func:`lake_tables`) as a lake under ``root``.

    Partitioned tables go to ``key=value/`` folders, split into
    ``files_per_partition`` files; partition columns stay inside the files too
    when ``keys_in_files``. Snapshot artifacts are real ``.pt2`` programs with
    each model's feature count.

    ``encoding`` (a seed or a :class:`reencode.LakeEncoding`) writes the same
    content with :func:`reencode.write_encoded` instead, the options above
    aside; the tables must then follow the contract.
    """
    root = Path(root)
    tables = lake_tables() if tables is None else tables
    if encoding is not None:
        import reencode

        content = logical(tables, artifacts=artifacts)
        if isinstance(encoding, int):
            encoding = reencode.seeded_encoding(content, encoding)
        return reencode.write_encoded(root, content, encoding)
    for name, table in tables.items():
        keys = TABLES[name].partition_keys
        pieces = table.values() if isinstance(table, dict) else [table]
        for piece in pieces:
            if not keys:
                _write(root / name, piece, 1)
                continue
            frame_keys = piece.select(list(keys)).to_pandas()
            for values, index in frame_keys.groupby(list(keys), sort=True).indices.items():
                folder = root / name
                for key, value in zip(keys, values):
                    folder = folder / f"{key}={value}"
                part = piece.take(index)
                _write(folder, part if keys_in_files else part.drop_columns(list(keys)),
                       files_per_partition)
    if artifacts and "snapshots" in tables:
        write_artifacts(root, tables)
    return root


def write_artifacts(root: Path, tables: dict) -> None:
    programs = artifact_bytes(tables)
    for sid, artifact in zip(tables["snapshots"]["snapshot_id"].to_pylist(),
                             tables["snapshots"]["artifact"].to_pylist()):
        path = root / artifact
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(programs[sid])


def artifact_bytes(tables: dict) -> dict[str, bytes]:
    """Each snapshot's ``.pt2`` program by snapshot id, with its model's feature count and task."""
    models = tables["models"]
    tasks = dict(zip(models["model_id"].to_pylist(), models["task"].to_pylist()))
    features = tables["model_features"].to_pandas().groupby("model_id").size()
    snapshots = tables["snapshots"]
    return {sid: snapshot_bytes(int(features[model_id]), tasks[model_id])
            for sid, model_id in zip(snapshots["snapshot_id"].to_pylist(),
                                     snapshots["model_id"].to_pylist())}


def logical(tables: dict, *, artifacts: bool = True):
    """``tables`` as :class:`reencode.Logical` content (with their artifacts' bytes)."""
    import reencode

    content = {name: reencode.partitions(TABLES[name], list(t.values()) if isinstance(t, dict)
                                         else [t])
               for name, t in tables.items()}
    programs = artifact_bytes(tables) if artifacts and "snapshots" in tables else {}
    return reencode.Logical(content, programs)


def _write(folder: Path, table: pa.Table, n_files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, index in enumerate(np.array_split(np.arange(table.num_rows), n_files)):
        pq.write_table(table.take(index), folder / f"part-{k}.parquet")


@contextlib.contextmanager
def postgres_schema(options: str | None = None):
    """``(url, schema)``: a fresh schema in the test PostgreSQL database, dropped afterwards.

    ``options`` are libpq session options (``-c timezone=...``). Skips the test
    when the server cannot be reached.
    """
    import pytest
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL)
    schema = f"hawkeye_test_{uuid.uuid4().hex[:10]}"
    try:
        with engine.begin() as conn:
            conn.execute(sa.schema.CreateSchema(schema))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable: {exc}")
    try:
        yield (PG_URL + (f"?options={quote(options)}" if options else "")), schema
    finally:
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True))
        engine.dispose()


def assert_same(left, right, table: str) -> None:
    """Frames equal up to row order (sorted by the table's key, else by its scalar columns)."""
    keys = [c for c in TABLES[table].key if c in left.columns] or \
        [c for c in left.columns if c != "partitions"]
    left, right = (f.sort_values(keys).reset_index(drop=True) for f in (left, right))
    pd.testing.assert_frame_equal(left, right)


@contextlib.contextmanager
def sql_copy(lake, backend: str, tmp_dir: Path):
    """A :class:`~hawkeye_dagster.lake.sql.SqlLake` holding a copy of ``lake``: in a SQLite
    file under ``tmp_dir`` (``backend="sqlite"``) or in a fresh PostgreSQL schema."""
    from hawkeye_dagster.lake.sql import SqlLake

    with _copied(lake, backend, tmp_dir) as (url, schema):
        yield SqlLake(url, schema=schema)


@contextlib.contextmanager
def sql_url_copy(lake, backend: str, tmp_dir: Path):
    """Like :func:`sql_copy`, but the SQLAlchemy URL of the copy, as ``--sql`` and
    ``TelemetrySource(sql_url=...)`` take it (PostgreSQL: the schema as the search path)."""
    with _copied(lake, backend, tmp_dir) as (url, schema):
        yield url if schema is None else f"{url}?options={quote(f'-csearch_path={schema}')}"


@contextlib.contextmanager
def _copied(lake, backend: str, tmp_dir: Path):
    from hawkeye_dagster.lake.to_sql import copy_lake_to_sql

    if backend == "sqlite":
        url = f"sqlite:///{tmp_dir}/lake.db"
        copy_lake_to_sql(lake, url)
        yield url, None
        return
    with postgres_schema() as (url, schema):
        copy_lake_to_sql(lake, url, schema=schema)
        yield url, schema
