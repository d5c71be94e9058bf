"""SqlLake on real SQLite and PostgreSQL: the same frames as the Parquet lake copied into them."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from hawkeye_dagster.contract import TABLES
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.conform import TIMESTAMP
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.sql import SqlLake
from hawkeye_dagster.lake.to_sql import copy_lake_to_sql
from hawkeye_dagster.time_range import TimeRange
from lake_factory import ADS, RANKER, START, assert_same, postgres_schema, write_lake


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> ParquetLake:
    return ParquetLake(str(write_lake(tmp_path_factory.mktemp("lake"), files_per_partition=2)))



def test_every_table_reads_as_from_parquet(parquet, sql):
    assert sql.tables() == parquet.tables()
    for table in TABLES:
        expected = parquet.read(table)
        if table == "snapshots":  # the copy makes artifacts absolute
            expected["artifact"] = expected["artifact"].map(parquet.resolve_artifact)
        assert_same(sql.read(table), expected, table)


@pytest.mark.parametrize("table, filters", [
    ("serving_samples", {"equals": {"model_id": ADS},
                         "time_range": TimeRange.of("2026-03-01T13:00", "2026-03-02T01:00")}),
    ("serving_samples", {"isin": {"model_id": [RANKER]}, "columns": ["ts", "größe", "user's age"]}),
    ("training_data", {"equals": {"dataset_id": "feed data"},
                       "isin": {"partition": ["2026-02-28"]}}),
    ("topline_metrics", {"equals": {"metric": "latency_lower_is_better"},
                         "time_range": TimeRange.of(START + pd.Timedelta("5h"), None)}),
    ("lineage_node_stats", {"time_range": TimeRange.of(None, START + pd.Timedelta("2h")),
                            "isin": {"node_id": ["größe", "user's age"]}}),
])
def test_filtered_reads_match(parquet, sql, table, filters):
    expected = parquet.read(table, **filters)
    got = sql.read(table, **filters)
    assert 0 < len(expected) < len(parquet.read(table))
    assert_same(got, expected, table)


def test_filter_values_are_bound_not_spliced(sql):
    hostile = "x' OR '1'='1"
    assert sql.read_arrow("serving_samples", equals={"model_id": hostile}).num_rows == 0
    assert sql.read_arrow("models", isin={"model_id": [hostile, RANKER]}).num_rows == 2


def test_serving_columns_are_the_models_own(parquet, sql):
    for model_id in (RANKER, ADS):
        assert sql.serving_columns(model_id) == parquet.serving_columns(model_id)


def test_absent_tables_and_columns(sql, tmp_path):
    with pytest.raises(ContractError) as info:
        sql.read("models", columns=["model_id", "no such"])
    assert (info.value.table, info.value.column) == ("models", "no such")
    empty = SqlLake(f"sqlite:///{tmp_path}/empty.db")
    assert empty.read_arrow("feature_alerts").num_rows == 0
    with pytest.raises(ContractError, match="table missing") as info:
        empty.read("models")
    assert info.value.table == "models"


def test_artifacts_must_be_absolute(sql, parquet):
    snapshots = sql.read("snapshots")
    path = snapshots["artifact"].iloc[0]
    with sql.open_artifact(path) as fh:
        assert fh.read(2) == b"PK"
    with pytest.raises(ContractError, match="absolute"):
        sql.resolve_artifact("artifacts/x.pt2")


def test_open_lake_picks_the_reader(tmp_path):
    assert isinstance(open_lake(sql_url=f"sqlite:///{tmp_path}/x.db"), SqlLake)
    with pytest.raises(ContractError, match="cannot open SQL URL"):
        open_lake(sql_url="nosuchdialect://host/db")
    with pytest.raises(ValueError):
        open_lake(lake=str(tmp_path), sql_url="sqlite://")


def test_sqlite_iso_strings_of_any_form(tmp_path):
    url = f"sqlite:///{tmp_path}/ext.db"
    engine = sa.create_engine(url)
    stamps = ["2026-03-01T10:00:00Z", "2026-03-01 11:00:00+00:00", "2026-03-01T13:30:00+02:00",
              "2026-03-01 12:00:00.000001", "2026-03-01T12:00:00"]
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE TABLE lineage_changes (ts TEXT, node_id TEXT, '
                             'change_type TEXT, version TEXT, description TEXT)'))
        conn.execute(sa.text("INSERT INTO lineage_changes VALUES (:ts, 'n', 'code', 'v', 'd')"),
                     [{"ts": s} for s in stamps])
    lake = SqlLake(url)
    got = lake.read("lineage_changes")["ts"]
    assert got.dt.tz is not None
    assert sorted(got.dt.strftime("%H:%M:%S.%f")) == [
        "10:00:00.000000", "11:00:00.000000", "11:30:00.000000", "12:00:00.000000",
        "12:00:00.000001"]
    window = TimeRange.of("2026-03-01T11:30", "2026-03-01T12:00:00.000001")
    kept = lake.read("lineage_changes", time_range=window)["ts"]
    assert sorted(kept.dt.strftime("%H:%M:%S.%f")) == ["11:30:00.000000", "12:00:00.000000"]


@pytest.mark.postgres
def test_postgres_naive_timestamps_mean_utc_whatever_the_session_zone():
    with postgres_schema(options="-c timezone=Asia/Tokyo") as (url, schema):
        engine = sa.create_engine(url)
        table = sa.Table("lineage_changes", sa.MetaData(schema=schema),
                         sa.Column("ts", sa.DateTime(timezone=False)),
                         *(sa.Column(c, sa.Text) for c in
                           ("node_id", "change_type", "version", "description")))
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(table.insert(), [
                {"ts": dt.datetime(2026, 3, 1, h), "node_id": "n", "change_type": "code",
                 "version": "v", "description": "d"} for h in (9, 10, 11)])
        lake = SqlLake(url, schema=schema)
        got = lake.read_arrow("lineage_changes",
                              time_range=TimeRange.of("2026-03-01T10:00Z", "2026-03-01T11:00Z"))
        assert got["ts"].type == TIMESTAMP
        assert got["ts"].to_pylist() == [dt.datetime(2026, 3, 1, 10, tzinfo=dt.timezone.utc)]


def test_copy_refuses_to_overwrite(parquet, tmp_path):
    url = f"sqlite:///{tmp_path}/twice.db"
    copy_lake_to_sql(parquet, url)
    rows = SqlLake(url).read_arrow("models").num_rows
    with pytest.raises(sa.exc.OperationalError):
        copy_lake_to_sql(parquet, url)
    assert SqlLake(url).read_arrow("models").num_rows == rows  # nothing half-written


def test_typed_nulls_and_partitions_round_trip(sql):
    runs = sql.read_arrow("training_runs")
    assert runs.schema.field("partitions").type == pa.list_(pa.string())
    assert runs["partitions"][0].as_py() == ["2026-02-27", "2026-02-28"]
    labels = sql.read("serving_samples", equals={"model_id": RANKER})["label"]
    assert labels.isna().sum() == (len(labels) + 4) // 5
