"""Hourly aggregates and histograms computed by the database equal the Parquet path's
``hourly_stats``, and the ``feature_stats`` asset reads a SQL lake through them."""

import warnings

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from hawkeye_dagster.analysis.feature_stats import PREDICTION, FeatureStats, hourly_stats
from hawkeye_dagster.gather.serving_stats import lake_reference
from hawkeye_dagster.assets import features
from hawkeye_dagster.assets.partitions import model_day_partitions, model_partitions
from hawkeye_dagster.contract import TABLES
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.pushdown import bin_thresholds, hourly_aggregates, hourly_histograms
from hawkeye_dagster.gather.pushdown_stats import hourly_feature_stats
from hawkeye_dagster.lake.sql import SqlLake
from hawkeye_dagster.lake.to_sql import copy_lake_to_sql
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.summary_shape import QUANTILE_NAMES
from hawkeye_dagster.time_range import TimeRange
from lake_factory import RANKER, START, lake_tables, postgres_schema, sql_copy, write_lake

warnings.filterwarnings("ignore", category=dg.BetaWarning)

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
def test_simulated_lake_in_postgres_matches(simulated, tmp_path):
    lake, _ = simulated("upstream_corruption")
    parquet = ParquetLake(str(lake))
    model = parquet.read("models")["model_id"].iloc[0]
    with sql_copy(parquet, "postgres", tmp_path) as sql:
        stats = expected(parquet, model)
        columns = sorted(stats["column"].unique())
        compare(hourly_aggregates(sql, "serving_samples", columns, equals={"model_id": model}),
                stats, quantiles=True)


# --- histograms and whole FeatureStats ----------------------------------------------------------

DAY = TimeRange.of(START, START + pd.Timedelta("1D"))


def tricky_edges(frame: pd.DataFrame, columns: list[str], n_edges: int = 7) -> np.ndarray:
    """Edges at the frame's own float32 values over its middle half, one of them repeated:
    values equal to an edge, values outside the edges on both sides, an empty bin, and (for
    float64 predictions) values on either side of the edge that they round to."""
    rows = []
    for name in columns:
        x = np.sort(frame[name].to_numpy(np.float32, na_value=np.nan))
        x = x[np.isfinite(x)]
        picks = x[(np.linspace(0.25, 0.75, n_edges - 1) * (len(x) - 1)).astype(int)]
        rows.append(np.sort(np.append(picks, picks[n_edges // 2])))
    return np.stack(rows)


def assert_same_stats(pushed: FeatureStats | None, pandas: FeatureStats) -> None:
    """Same hours, columns, counts and histogram counts; moments, quantiles and bin sums to
    float32 tolerance (the database works on the stored doubles)."""
    assert pushed is not None
    assert pushed.hours.equals(pandas.hours) and pushed.hours.dtype == pandas.hours.dtype
    assert pushed.columns == pandas.columns
    for name, counts in pandas.counts.items():
        np.testing.assert_array_equal(pushed.counts[name], counts, err_msg=name)
    np.testing.assert_array_equal(pushed.hist_count, pandas.hist_count)
    for name, values in [*pandas.values.items(), ("hist_sum", pandas.hist_sum)]:
        mine = pushed.hist_sum if name == "hist_sum" else pushed.values[name]
        assert mine.dtype == values.dtype, name
        scale = np.nanmax(np.abs(values), axis=0, keepdims=True, initial=0)  # per column
        scale[scale == 0] = 1
        np.testing.assert_allclose(mine / scale, values / scale, rtol=2e-6, atol=1e-6,
                                   err_msg=name)


def test_bin_thresholds_bin_doubles_as_their_float32_roundings():
    rng = np.random.default_rng(0)
    edges = np.sort(np.concatenate([rng.standard_normal(60).astype(np.float32),
                                    np.float32([0, -0.0, 1, 2, 3e-45, 1e30])]))
    below = np.nextafter(edges, np.float32(-np.inf)).astype(np.float64)
    # every double near an edge: the midpoints to the float32 below and one step either side
    mid = (edges + below) / 2
    probes = np.concatenate([mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf),
                             edges, below, rng.standard_normal(1000) * 3])
    thresholds = bin_thresholds(edges[None])[0]
    np.testing.assert_array_equal(np.searchsorted(thresholds, probes, side="right"),
                                  np.searchsorted(edges, probes.astype(np.float32),
                                                  side="right"))


@pytest.mark.parametrize("window", [DAY, None])
def test_feature_stats_match_the_parquet_path(parquet, sql, window):
    frame = parquet.serving_samples(RANKER, window)
    columns = [*(c for c in frame.columns if c not in FIXED), PREDICTION]
    edges = tricky_edges(frame, columns)
    expected_stats = hourly_stats(frame, columns, edges)
    pushed = hourly_feature_stats(sql, columns, edges, time_range=window,
                                  equals={"model_id": RANKER})
    assert_same_stats(pushed, expected_stats)
    # the awkward cases happen: missing and infinite values, values outside the edges, and
    # predictions (float64) that only their float32 rounding puts on an edge
    clicks = columns.index("clicks.7d")
    assert pushed.counts["n_null"][:, clicks].sum() and pushed.counts["n_inf"][:, clicks].sum()
    assert (pushed.hist_count[..., 0].sum(axis=0) > 0).all()
    assert (pushed.hist_count[..., -1].sum(axis=0) > 0).all()
    prediction = frame[PREDICTION].to_numpy(np.float64)
    rounded_onto_edge = np.isin(prediction.astype(np.float32), edges[-1]) & ~np.isin(
        prediction, edges[-1].astype(np.float64))
    assert rounded_onto_edge.any()


def test_reference_profile_is_the_same_from_sql(parquet, sql):
    # few enough rows that the edge sample is every row, in whatever order the lake returns
    window = TimeRange.of(START, START + pd.Timedelta("2D"))
    from_parquet = lake_reference(parquet, RANKER, window)
    from_sql = lake_reference(sql, RANKER, window)
    np.testing.assert_array_equal(from_sql.edges, from_parquet.edges)
    assert_same_stats(from_sql.stats, from_parquet.stats)


def test_histograms_of_nothing(sql):
    edges = np.zeros((1, 3), np.float32)
    assert hourly_histograms(sql, "serving_samples", [PREDICTION], edges,
                             equals={"model_id": "no such model"}).empty
    assert hourly_feature_stats(sql, [PREDICTION], edges,
                                equals={"model_id": "no such model"}) is None
    with pytest.raises(ValueError, match="edges"):
        hourly_histograms(sql, "serving_samples", [PREDICTION], np.zeros((2, 3), np.float32))


def _fetched(lake: SqlLake, run) -> list[int]:
    """Rows returned by each statement that ``run()`` sends to the lake, counted by running the
    recorded statements again on a raw connection."""
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    sa.event.listen(lake.engine, "after_cursor_execute", record)
    try:
        run()
    finally:
        sa.event.remove(lake.engine, "after_cursor_execute", record)
    raw = lake.engine.raw_connection()
    try:
        cursor = raw.cursor()
        counts = []
        for statement, parameters in statements:
            cursor.execute(statement, parameters)
            counts.append(len(cursor.fetchall()))
        return counts
    finally:
        raw.close()


@pytest.fixture(scope="module")
def dense(sql, tmp_path_factory):
    """The ``sql`` lake with every serving sample of the ranker stored eight times."""
    tables = awkward_tables()
    serving = tables["serving_samples"]
    tables["serving_samples"] = {**serving, RANKER: pa.concat_tables([serving[RANKER]] * 8)}
    lake = ParquetLake(str(write_lake(tmp_path_factory.mktemp("dense") / "lake", tables,
                                      artifacts=False)))
    backend = "sqlite" if sql.is_sqlite else "postgres"
    with sql_copy(lake, backend, tmp_path_factory.mktemp("dense-db")) as copy:
        yield copy


def test_pushdown_returns_rows_per_hour_not_per_sample(parquet, sql, dense):
    frame = parquet.serving_samples(RANKER, DAY)
    columns = [*(c for c in frame.columns if c not in FIXED), PREDICTION]
    edges = tricky_edges(frame, columns)

    def stats(lake):
        return hourly_feature_stats(lake, columns, edges, time_range=DAY,
                                    equals={"model_id": RANKER})

    def sums_and_histograms(lake):
        hourly_aggregates(lake, "serving_samples", columns, time_range=DAY,
                          equals={"model_id": RANKER}, quantiles=False)
        hourly_histograms(lake, "serving_samples", columns, edges, time_range=DAY,
                          equals={"model_id": RANKER})

    for lake in (sql, dense):
        stats(lake)  # tables reflected before counting
    counted = {lake: _fetched(lake, lambda: stats(lake)) for lake in (sql, dense)}
    np.testing.assert_array_equal(stats(dense).counts["count"], 8 * stats(sql).counts["count"])
    # the count can tell: reading the samples returns eight times as many rows
    assert sum(_fetched(dense, lambda: dense.serving_samples(RANKER, DAY, columns))) == \
        8 * sum(_fetched(sql, lambda: sql.serving_samples(RANKER, DAY, columns)))
    assert _fetched(dense, lambda: sums_and_histograms(dense)) == \
        _fetched(sql, lambda: sums_and_histograms(sql))
    if sql.is_sqlite:  # no percentile_cont: the finite values are pulled for the quantiles
        assert len(counted[sql]) == 3 and counted[dense][1] == 8 * counted[sql][1]
        del counted[sql][1], counted[dense][1]
    # one statement for the sums (and quantiles), one row per hour; one for the histograms
    assert len(counted[sql]) == 2 and counted[dense] == counted[sql]
    assert counted[sql][0] == len(stats(sql).hours)


# --- the feature_stats asset on a SQL lake ------------------------------------------------------

MODEL = "mp_value"


@pytest.fixture(scope="module")
def simulated_sql(request, simulated, tmp_path_factory):
    """``(parquet lake path, SQL URL)``: a simulated lake and its copy in SQLite or PostgreSQL."""
    lake, _ = simulated("transform_change")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('simulated-db')}/lake.db"
        copy_lake_to_sql(ParquetLake(str(lake)), url)
        yield lake, url
        return
    with postgres_schema() as (url, schema):
        copy_lake_to_sql(ParquetLake(str(lake)), url, schema=schema)
        yield lake, f"{url}?options=-csearch_path%3D{schema}"


@pytest.mark.parametrize("simulated_sql", ["sqlite", pytest.param("postgres",
                                                                  marks=pytest.mark.postgres)],
                         indirect=True)
def test_feature_stats_asset_on_sql_matches_parquet(simulated_sql, tmp_path, monkeypatch):
    lake, url = simulated_sql

    def no_rows(*args, **kwargs):
        raise AssertionError("feature_stats read serving samples out of the database")

    monkeypatch.setattr(SqlLake, "serving_samples", no_rows)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(model_partitions.name, [MODEL])
    on_parquet = {"telemetry": TelemetrySource(lake=str(lake)),
                  "storage": HawkeyeStorage(root=str(tmp_path / "parquet"))}
    on_sql = {"telemetry": TelemetrySource(sql_url=url),
              "storage": HawkeyeStorage(root=str(tmp_path / "sql"))}
    assert dg.materialize([features.feature_reference], partition_key=MODEL, instance=instance,
                          resources=on_parquet,
                          run_config={"ops": {"feature_reference": {"config": {"days": 3}}}}
                          ).success
    for name in ("reference.parquet", "thresholds.parquet"):  # the same edges for both
        on_sql["storage"].write_bytes(
            on_parquet["storage"].path(features.STORE, MODEL, name).read_bytes(),
            features.STORE, MODEL, name)
    day = features._served_dates(ParquetLake(str(lake)), MODEL)[1]  # in the reference window
    key = dg.MultiPartitionKey({"date": day, "model": MODEL})
    assert key in model_day_partitions.get_partition_keys(dynamic_partitions_store=instance)
    rows, stored = [], []
    for resources in (on_parquet, on_sql):
        result = dg.materialize([features.feature_stats], partition_key=key, instance=instance,
                                resources=resources)
        assert result.success
        rows.append(result.asset_materializations_for_node("feature_stats")[0]
                    .metadata["rows"].value)
        stored.append(resources["storage"].read_parquet(features.STORE, MODEL, "stats",
                                                        f"{day}.parquet"))
    assert rows[0] == rows[1] > 0
    parquet_frame, sql_frame = stored
    assert list(sql_frame.columns) == list(parquet_frame.columns)
    assert (sql_frame.dtypes == parquet_frame.dtypes).all()
    assert_same_stats(FeatureStats.from_frame(sql_frame), FeatureStats.from_frame(parquet_frame))
