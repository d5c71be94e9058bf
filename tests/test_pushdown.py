"""Hourly aggregates computed by the database equal the Parquet path's ``hourly_stats``."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from hawkeye_dagster.analysis.feature_stats import PREDICTION, QUANTILE_NAMES, hourly_stats
from hawkeye_dagster.contract import TABLES
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.pushdown import hourly_aggregates
from hawkeye_dagster.lake.reader import TimeRange
from hawkeye_dagster.lake.sql import SqlLake
from hawkeye_dagster.lake.to_sql import copy_lake_to_sql
from lake_factory import RANKER, START, lake_tables, postgres_schema, write_lake

FIXED = set(TABLES["serving_samples"].column_names)
STATS = ["count", "n_null", "n_inf", "mean", "std", "min", "max"]


def expected(parquet: ParquetLake, model: str, time_range=None) -> pd.DataFrame:
    """The Parquet path: read the samples, summarize with feature_stats.hourly_stats."""
    frame = parquet.serving_samples(model, time_range=time_range)
    columns = [*(c for c in frame.columns if c not in FIXED), PREDICTION]
    return hourly_stats(frame, columns, np.zeros((len(columns), 1), np.float32)).to_frame()


def compare(pushed: pd.DataFrame, stats: pd.DataFrame, quantiles: bool) -> None:
    names = STATS + (list(QUANTILE_NAMES) if quantiles else [])
    left = pushed.set_index(["hour", "column"])[names].sort_index()
    right = stats.set_index(["hour", "column"])[names].sort_index()
    assert left.index.equals(right.index)
    for name in names:
        np.testing.assert_allclose(left[name].to_numpy(np.float64),
                                   right[name].to_numpy(np.float64), rtol=2e-6, atol=1e-6,
                                   err_msg=name)


def awkward_tables():
    """The lake_factory lake with NaN, inf and nulls in the ranker's samples, and a feature
    whose name needs quoting."""
    tables = lake_tables()
    serving = tables["serving_samples"][RANKER]
    values = serving["clicks.7d"].to_numpy(zero_copy_only=False).copy()
    values[::7], values[3::11], values[5::13] = np.nan, np.inf, -np.inf
    mask = np.zeros(len(values), bool)
    mask[1::5] = True
    at = serving.schema.get_field_index("clicks.7d")
    serving = serving.set_column(at, "clicks.7d", pa.array(values, pa.float32(), mask=mask))
    renamed = {"user's age": 'user\'s "age"; drop'}
    serving = serving.rename_columns([renamed.get(c, c) for c in serving.column_names])
    features = tables["model_features"]
    names = [renamed.get(f, f) if m == RANKER else f for m, f in zip(
        features["model_id"].to_pylist(), features["feature_name"].to_pylist())]
    training = tables["training_data"]
    training = {k: v.rename_columns([renamed.get(c, c) for c in v.column_names])
                for k, v in training.items()}
    return dict(tables, serving_samples={**tables["serving_samples"], RANKER: serving},
                model_features=features.set_column(2, "feature_name", pa.array(names)),
                training_data=training)


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    return ParquetLake(str(write_lake(tmp_path_factory.mktemp("lake") / "lake", awkward_tables(),
                                      artifacts=False)))



@pytest.mark.parametrize("window", [None, TimeRange.of(START + pd.Timedelta("5h"),
                                                       START + pd.Timedelta("30h"))])
def test_aggregates_match_the_parquet_path(parquet, sql, window):
    columns = [c for c in sql.serving_columns(RANKER) if c not in FIXED] + [PREDICTION]
    pushed = hourly_aggregates(sql, "serving_samples", columns, time_range=window,
                               equals={"model_id": RANKER})
    stats = expected(parquet, RANKER, window)
    compare(pushed, stats, quantiles=True)
    clicks = pushed[pushed["column"] == "clicks.7d"]
    assert clicks["n_null"].sum() > 0 and clicks["n_inf"].sum() > 0  # the awkward values count


def test_without_quantiles_and_for_other_tables(sql, parquet):
    pushed = hourly_aggregates(sql, "lineage_node_stats", ["value"], quantiles=False)
    frame = parquet.read("lineage_node_stats")
    hours = frame.groupby(frame["ts"].dt.floor("h"))["value"]
    assert pushed["count"].tolist() == hours.size().tolist()
    np.testing.assert_allclose(pushed["mean"], hours.mean(), rtol=1e-9)
    np.testing.assert_allclose(pushed["std"], hours.std(ddof=0), rtol=1e-6, atol=1e-9)
    assert not set(QUANTILE_NAMES) & set(pushed.columns)


def test_bad_requests_name_the_table(sql):
    with pytest.raises(ContractError, match="no such column"):
        hourly_aggregates(sql, "serving_samples", ["nope"])
    with pytest.raises(ContractError, match="time column"):
        hourly_aggregates(sql, "models", ["model_id"])
    empty = hourly_aggregates(sql, "serving_samples", ["prediction"],
                              equals={"model_id": "no such model"})
    assert empty.empty


@pytest.mark.postgres
def test_simulated_lake_in_postgres_matches(simulated):
    lake, _ = simulated("upstream_corruption")
    parquet = ParquetLake(str(lake))
    model = parquet.read("models")["model_id"].iloc[0]
    with postgres_schema() as (url, schema):
        copy_lake_to_sql(parquet, url, schema=schema)
        sql = SqlLake(url, schema=schema)
        stats = expected(parquet, model)
        columns = sorted(stats["column"].unique())
        compare(hourly_aggregates(sql, "serving_samples", columns, equals={"model_id": model}),
                stats, quantiles=True)
