"""A simulated lake conforms to the contract and reads the same from Parquet, SQLite, PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest

from hawkeye_dagster.contract import TABLES
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.validate import validate_lake
from hawkeye_dagster.time_range import TimeRange
from lake_factory import assert_same


@pytest.fixture(scope="module")
def parquet(simulated) -> ParquetLake:
    lake, _ = simulated("demo")
    return ParquetLake(str(lake))



def test_simulated_lake_validates_clean(parquet):
    assert validate_lake(parquet) == []


def test_sql_copy_validates_clean(sql):
    assert validate_lake(sql) == []


def test_sql_and_parquet_frames_are_identical(parquet, sql):
    for table in sorted(parquet.tables()):
        expected = parquet.read(table)
        if table == "snapshots":
            expected["artifact"] = expected["artifact"].map(parquet.resolve_artifact)
        assert_same(sql.read(table), expected, table)


def test_one_model_one_day_is_identical(parquet, sql):
    models = parquet.read("models")["model_id"].unique()
    last = parquet.read("serving_samples", columns=["ts"])["ts"].max().floor("D")
    day = TimeRange.of(last - pd.Timedelta("1D"), last)
    for model_id in models:
        expected = parquet.serving_samples(model_id, day)
        assert len(expected) and expected["ts"].between(day.start, day.end).all()
        assert_same(sql.serving_samples(model_id, day), expected, "serving_samples")
        assert sql.serving_columns(model_id) == parquet.serving_columns(model_id)
    assert set(TABLES) - parquet.tables() <= {"feature_alerts"}
