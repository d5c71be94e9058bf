"""validate_lake: each way to break the contract is reported once, naming table, file and column."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.sql import SqlLake
from hawkeye_dagster.lake.to_sql import copy_lake_to_sql
from hawkeye_dagster.lake.validate import Problem, validate_lake
from lake_factory import ADS, DATASETS, DAYS, RANKER, lake_tables, snapshot_bytes, write_lake


@pytest.fixture(scope="module")
def clean_tables():
    return lake_tables()


def replace(table: pa.Table, column: str, values) -> pa.Table:
    """``table`` with a column's values replaced (at its type, unless given as an Arrow array)."""
    at = table.schema.get_field_index(column)
    if not isinstance(values, pa.Array):
        values = pa.array(values, table.schema.field(at).type)
    return table.set_column(at, column, values)


def where(problems: list[Problem]) -> set[tuple]:
    """Problems as (table, file relative to the lake, column)."""
    return {(p.table, p.file, p.column) for p in problems}


def test_clean_lake_has_no_problems(tmp_path, clean_tables):
    root = write_lake(tmp_path / "lake", clean_tables, files_per_partition=2)
    assert validate_lake(ParquetLake(str(root))) == []
    url = f"sqlite:///{tmp_path}/lake.db"
    copy_lake_to_sql(ParquetLake(str(root)), url)
    assert validate_lake(SqlLake(url)) == []


def test_naive_timestamps_nan_labels_and_absent_optional_table_are_fine(tmp_path, clean_tables):
    changes = clean_tables["lineage_changes"]
    naive = changes.set_column(0, "ts", changes["ts"].cast(pa.timestamp("ns")))
    tables = {k: v for k, v in clean_tables.items() if k != "feature_alerts"}
    serving = dict(tables["serving_samples"], **{ADS: replace(  # NaN, not null: still missing
        tables["serving_samples"][ADS], "label", pa.array(np.full(144, np.nan)))})
    root = write_lake(tmp_path / "lake", dict(tables, lineage_changes=naive,
                                              serving_samples=serving))
    assert validate_lake(ParquetLake(str(root))) == []


def _break(tables, name, **columns):
    table = tables[name]
    for column, values in columns.items():
        table = replace(table, column, values)
    return dict(tables, **{name: table})


CASES = {
    "missing table": (
        lambda t: {k: v for k, v in t.items() if k != "pipelines"},
        {("pipelines", "", None)}, "required table is missing"),
    "missing column": (
        lambda t: dict(t, models=t["models"].drop_columns(["segment"])),
        {("models", "models/part-0.parquet", "segment")}, "required column is missing"),
    "mistyped column": (
        lambda t: _break(t, "training_metrics", step=pa.array(["1", "2", "3"] * 5)),
        {("training_metrics", "training_metrics/part-0.parquet", "step")}, "stored as string"),
    "non-finite value": (
        lambda t: _break(t, "topline_metrics",
                         value=np.r_[np.inf, np.ones(t["topline_metrics"].num_rows - 1)]),
        {("topline_metrics", "topline_metrics/part-0.parquet", "value")}, "1 NaN or infinite"),
    "infinite label": (
        lambda t: dict(t, serving_samples=dict(t["serving_samples"], **{ADS: replace(
            t["serving_samples"][ADS], "label", np.r_[np.inf, np.full(143, np.nan)])})),
        {("serving_samples", f"serving_samples/model_id={ADS}/date=2026-03-01/part-0.parquet",
          "label")}, "1 infinite values"),
    "null value": (
        lambda t: _break(t, "models", segment=["main", None, "main"]),
        {("models", "models/part-0.parquet", "segment")}, "1 null values"),
    "duplicate ids": (
        lambda t: dict(t, snapshots=pa.concat_tables([t["snapshots"], t["snapshots"][:1]])),
        {("snapshots", "snapshots/part-0.parquet", "snapshot_id")},
        "1 duplicate ids, e.g. ('ranker@1',)"),
    "task outside enumeration": (
        lambda t: _break(t, "models", task=["ranking", "regression", "binary_classification"]),
        {("models", "models/part-0.parquet", "task")}, "'ranking'"),
    "kind outside enumeration": (
        lambda t: _break(t, "lineage_nodes", kind=["source", "view"] + ["feature"] * 4),
        {("lineage_nodes", "lineage_nodes/part-0.parquet", "kind")}, "'view'"),
    "change type outside enumeration": (
        lambda t: _break(t, "lineage_changes", change_type=["hotfix"]),
        {("lineage_changes", "lineage_changes/part-0.parquet", "change_type")}, "'hotfix'"),
    "orchestrator outside enumeration": (
        lambda t: _break(t, "pipelines", orchestrator=["external", "cron", "airflow"]),
        {("pipelines", "pipelines/part-0.parquet", "orchestrator")}, "'cron'"),
    "severity outside enumeration": (
        lambda t: _break(t, "feature_alerts", severity=["fatal"]),
        {("feature_alerts", "feature_alerts/part-0.parquet", "severity")}, "'fatal'"),
    "traffic fraction above 1": (
        lambda t: _break(t, "experiments", traffic_fraction=[1.0, 0.5, 0.5, 1.5]),
        {("experiments", "experiments/part-0.parquet", "traffic_fraction")},
        "values outside [0.0, 1.0]"),
    "traffic fractions sum above 1": (
        lambda t: _break(t, "experiments", traffic_fraction=[1.0, 0.6, 0.5, 1.0]),
        {("experiments", "experiments/part-0.parquet", "traffic_fraction")},
        "sum above 1 at 1 times, e.g. 1.1 for model 'ranker'"),
    "feature edge to unknown node": (
        lambda t: _break(t, "lineage_edges", downstream_id=["tbl clicks", "ghost", "dwell time"]),
        {("lineage_edges", "lineage_edges/part-0.parquet", "downstream_id")},
        "1 ids not in lineage_nodes.node_id, e.g. 'ghost'"),
    "feature of unknown node": (
        lambda t: _break(t, "features", lineage_node_id=["clicks.7d", "nowhere", "größe",
                                                         "dwell time"]),
        {("features", "features/part-0.parquet", "lineage_node_id")}, "'nowhere'"),
    "node of unknown pipeline": (
        lambda t: _break(t, "lineage_nodes", pipeline_id=["raw_ingest", "lost"] + [None] * 4),
        {("lineage_nodes", "lineage_nodes/part-0.parquet", "pipeline_id")}, "'lost'"),
    "lineage cycle": (
        lambda t: _break(t, "lineage_edges", upstream_id=["raw.clicks", "tbl clicks", "clicks.7d"],
                         downstream_id=["tbl clicks", "clicks.7d", "raw.clicks"]),
        {("lineage_edges", "lineage_edges/part-0.parquet", "upstream_id")},
        "clicks.7d -> raw.clicks -> tbl clicks -> clicks.7d"),  # from the smallest id
    "positions not 0..F-1": (
        lambda t: _break(t, "model_features", position=[0, 1, 3, 0, 1]),
        {("model_features", "model_features/part-0.parquet", "position")}, "'ranker'"),
    "model feature missing from its serving samples": (
        lambda t: dict(t, serving_samples=dict(
            t["serving_samples"],
            **{RANKER: t["serving_samples"][RANKER].drop_columns(["größe"])})),
        {("serving_samples", f"serving_samples/model_id={RANKER}", "größe")},
        "features of 'ranker' missing"),
    "model feature missing from its training data": (
        lambda t: dict(t, training_data=dict(
            t["training_data"],
            **{DATASETS[ADS]: t["training_data"][DATASETS[ADS]].drop_columns(["dwell time"])})),
        {("training_data", "training_data/dataset_id=ads data", "dwell time")},
        "features of 'ads data' missing"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_named(tmp_path, clean_tables, case):
    mutate, expected, reason = CASES[case]
    root = write_lake(tmp_path / "lake", mutate(clean_tables), artifacts=False)
    problems = validate_lake(ParquetLake(str(root)), check_artifacts=False)
    relative = {(p.table, p.file.removeprefix(f"{root}").lstrip("/") if p.file else None,
                 p.column) for p in problems}
    assert relative == expected, [str(p) for p in problems]
    assert reason in problems[0].reason
    line = str(problems[0])
    assert "\n" not in line and f"table {problems[0].table!r}" in line


def test_problems_across_files_name_the_table_folder(tmp_path, clean_tables):
    serving = clean_tables["serving_samples"][ADS]
    repeated = replace(serving, "request_id", ["same"] * serving.num_rows)
    root = write_lake(tmp_path / "lake",
                      dict(clean_tables, serving_samples={ADS: repeated}), artifacts=False)
    problems = validate_lake(ParquetLake(str(root)), check_artifacts=False)
    assert where(problems) == {("serving_samples", f"{root}/serving_samples",
                                "model_id, request_id")}


def test_rows_outside_their_date_partition(tmp_path, clean_tables):
    serving = clean_tables["serving_samples"][ADS]
    shifted = replace(serving, "ts", pc.add(serving["ts"], pa.scalar(3600 * 10**6,
                                                                     pa.duration("us"))))
    root = write_lake(tmp_path / "lake", dict(clean_tables, serving_samples={ADS: shifted}),
                      artifacts=False)
    problems = validate_lake(ParquetLake(str(root)), check_artifacts=False)
    assert where(problems) == {("serving_samples", f"{root}/serving_samples/model_id={ADS}/"
                                f"date={day}/part-0.parquet", "ts") for day in DAYS}
    assert {p.reason for p in problems} == {"3 rows whose UTC date is not their date= partition"}


def test_empty_and_corrupt_files_are_named(tmp_path, clean_tables):
    root = write_lake(tmp_path / "lake", clean_tables, artifacts=False)
    (root / "feature_alerts" / "empty.parquet").write_bytes(b"")
    good = (root / "models" / "part-0.parquet").read_bytes()
    (root / "models" / "part-0.parquet").write_bytes(good[: len(good) // 2])
    problems = validate_lake(ParquetLake(str(root)), check_artifacts=False)
    assert where(problems) == {("feature_alerts", f"{root}/feature_alerts/empty.parquet", None),
                               ("models", f"{root}/models/part-0.parquet", None)}
    reasons = {p.table: p.reason for p in problems}
    assert "empty file" in reasons["feature_alerts"]
    assert "not a readable Parquet file" in reasons["models"]


def test_bad_snapshot_artifacts(tmp_path, clean_tables):
    root = write_lake(tmp_path / "lake", clean_tables)
    (root / "artifacts" / "ranker@1.pt2").unlink()
    (root / "artifacts" / "ranker@2.pt2").write_bytes(pickle.dumps({"weights": [1.0]}))
    (root / "artifacts" / "ads@1.pt2").write_bytes(snapshot_bytes(5, "regression"))
    problems = validate_lake(ParquetLake(str(root)))
    assert where(problems) == {("snapshots", f"{root}/artifacts/{s}.pt2", "artifact")
                               for s in ("ranker@1", "ranker@2", "ads@1")}
    reasons = {p.file.rsplit("/", 1)[1]: p.reason for p in problems}
    assert "missing" in reasons["ranker@1.pt2"]
    assert "pickle" in reasons["ranker@2.pt2"]
    assert "takes 5 features" in reasons["ads@1.pt2"]


def test_validation_reads_only_the_columns_it_needs(tmp_path, clean_tables):
    root = write_lake(tmp_path / "lake", clean_tables, artifacts=False)
    lake = ParquetLake(str(root))
    reads = []
    real = lake.read_part

    def counting(part, columns=None):
        reads.append((part.table, columns))
        return real(part, columns)

    lake.read_part = counting
    assert validate_lake(lake, check_artifacts=False) == []
    serving = [c for t, c in reads if t == "serving_samples"]
    assert serving and all(c is not None and not {"clicks.7d", "größe"} & set(c) for c in serving)


def test_sql_lake_problems_name_the_sql_table(tmp_path, clean_tables):
    root = write_lake(tmp_path / "lake", _break(clean_tables, "pipelines",
                                                orchestrator=["external", "cron", "airflow"]),
                      artifacts=False)
    url = f"sqlite:///{tmp_path}/lake.db"
    copy_lake_to_sql(ParquetLake(str(root)), url)
    problems = validate_lake(SqlLake(url), check_artifacts=False)
    assert where(problems) == {("pipelines", f"{url} table pipelines", "orchestrator")}
