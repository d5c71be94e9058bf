"""SqlLake and the push-down on databases stored as users store them (``sql_encodings``):
every timestamp encoding, integer width, float type, partition-list type and quoted feature
name that the contract allows, alone and mixed per table, read as from the Parquet lake.

PostgreSQL sessions run in Asia/Kathmandu (UTC+05:45), so that a time truncated or compared in
the session's zone rather than in UTC moves rows to other hours.
"""

from __future__ import annotations

import contextlib
import itertools
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from hawkeye_dagster.analysis.feature_stats import PREDICTION, hourly_stats
from hawkeye_dagster.contract import TABLES
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.pushdown import hourly_aggregates, hourly_histograms
from hawkeye_dagster.gather.pushdown_stats import hourly_feature_stats
from hawkeye_dagster.lake.sql import SqlLake
from hawkeye_dagster.lake.validate import validate_lake
from hawkeye_dagster.time_range import TimeRange
from lake_factory import ADS, RANKER, START, assert_same, postgres_schema, write_lake
from sql_encodings import SQLITE_TIMESTAMPS, Encoding, write_sql
from test_pushdown import DAY, FIXED, assert_same_stats, awkward_tables, tricky_edges

SESSION_ZONE = "Asia/Kathmandu"
#: per backend, the encodings tested: one for every table, or one per table in turn
SQLITE_CASES = (*SQLITE_TIMESTAMPS, "rows", "per_table")
POSTGRES_CASES = ("timestamptz", "timestamp", "per_table")
CASES = [*(("sqlite", c) for c in SQLITE_CASES),
         *(pytest.param("postgres", c, marks=pytest.mark.postgres) for c in POSTGRES_CASES)]
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def encodings(backend: str, case: str) -> dict[str, Encoding]:
    """The encoding of every table: ``case`` for all (with PostgreSQL's narrower types), or
    for ``per_table`` each table with the next timestamp encoding, integer width, feature
    type and (PostgreSQL) partition-list type."""
    if case != "per_table":
        narrow = Encoding(case, "SMALLINT", "REAL", "JSONB") if backend == "postgres" else \
            Encoding(case, "INTEGER", "REAL")
        return {name: narrow for name in TABLES}
    timestamps = (*SQLITE_TIMESTAMPS, "rows") if backend == "sqlite" else \
        ("timestamptz", "timestamp")
    lists = ("TEXT", "JSONB", "JSON") if backend == "postgres" else ("TEXT",)
    mixes = zip(itertools.cycle(timestamps), itertools.cycle(("SMALLINT", "INTEGER", "BIGINT")),
                itertools.cycle(("REAL", "DOUBLE PRECISION")), itertools.cycle(lists))
    return {name: Encoding(*mix) for name, mix in zip(TABLES, mixes)}


def quoted_tables() -> dict:
    """``awkward_tables`` (NaN, inf and nulls; a feature named with both quotes) with the ads
    model's ``dwell time`` renamed to a name with a dash and parentheses too."""
    tables = awkward_tables()
    renamed = {"dwell time": "dwell-time (ms) ü"}

    def rename(table: pa.Table) -> pa.Table:
        return table.rename_columns([renamed.get(c, c) for c in table.column_names])

    features = tables["model_features"]
    names = pc.replace_substring(features["feature_name"], "dwell time", renamed["dwell time"])
    return dict(tables,
                serving_samples={**tables["serving_samples"],
                                 ADS: rename(tables["serving_samples"][ADS])},
                training_data={k: rename(v) for k, v in tables["training_data"].items()},
                model_features=features.set_column(2, "feature_name", names))


def new_database(backend: str, folder):
    """A context of ``(url, schema)`` for a new database: a SQLite file in ``folder``, or a
    fresh PostgreSQL schema (dropped on exit) whose sessions run in :data:`SESSION_ZONE`."""
    if backend == "sqlite":
        return contextlib.nullcontext((f"sqlite:///{folder}/lake.db", None))
    return postgres_schema(options=f"-c timezone={SESSION_ZONE}")


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> ParquetLake:
    return ParquetLake(str(write_lake(tmp_path_factory.mktemp("lake") / "lake", quoted_tables(),
                                      artifacts=False)))


@pytest.fixture(scope="module")
def database(parquet, tmp_path_factory):
    """``database(backend, case)``: the Parquet lake's tables written in that case's
    encodings, as a SqlLake (written once per module; PostgreSQL in fresh schemas)."""
    tables = quoted_tables()
    snapshots = tables["snapshots"]
    artifacts = pa.array([parquet.resolve_artifact(a) for a in snapshots["artifact"].to_pylist()])
    tables["snapshots"] = snapshots.set_column(snapshots.schema.get_field_index("artifact"),
                                               "artifact", artifacts)
    lakes = {}
    with contextlib.ExitStack() as schemas:
        def open_database(backend: str, case: str) -> SqlLake:
            if (backend, case) not in lakes:
                url, schema = schemas.enter_context(
                    new_database(backend, tmp_path_factory.mktemp("db")))
                write_sql(url, tables, encodings(backend, case), schema=schema)
                lakes[backend, case] = SqlLake(url, schema=schema)
            return lakes[backend, case]

        yield open_database
        for lake in lakes.values():
            lake.engine.dispose()


def expected_read(parquet: ParquetLake, table: str, **filters) -> pd.DataFrame:
    """The Parquet lake's read, with artifacts absolute as the database holds them."""
    frame = parquet.read(table, **filters)
    if table == "snapshots":
        frame["artifact"] = frame["artifact"].map(parquet.resolve_artifact)
    return frame


@pytest.mark.parametrize("backend, case", CASES)
def test_every_table_reads_as_from_parquet(database, parquet, backend, case):
    sql = database(backend, case)
    assert sql.tables() == parquet.tables()
    for table in TABLES:  # timestamps tz-aware UTC nanoseconds: assert_same checks dtypes
        assert_same(sql.read(table), expected_read(parquet, table), table)
    for model_id in (RANKER, ADS):
        assert sql.serving_columns(model_id) == parquet.serving_columns(model_id)
        assert_same(sql.serving_samples(model_id), parquet.serving_samples(model_id),
                    "serving_samples")
    assert validate_lake(sql, check_artifacts=False) == []


ROW = START + pd.Timedelta("5h")  # a serving sample's instant (they are 20 minutes apart)
NS, US = pd.Timedelta(1, "ns"), pd.Timedelta(1, "us")
WINDOWS = [TimeRange.of(ROW, ROW + pd.Timedelta("7h")),  # from a row, up to one
           TimeRange.of(ROW + NS, ROW + pd.Timedelta("7h") + NS),  # a nanosecond later
           TimeRange.of(ROW - US, ROW + pd.Timedelta("20min") - US),
           TimeRange.of(ROW + pd.Timedelta("19h"), None), TimeRange.of(None, ROW)]


@pytest.mark.parametrize("backend, case", CASES)
def test_time_ranges_select_the_same_rows(database, parquet, backend, case):
    sql = database(backend, case)
    for window, (table, filters) in itertools.product(WINDOWS, [
            ("serving_samples", {"equals": {"model_id": RANKER}}),
            ("serving_samples", {"columns": ["ts", "größe", 'user\'s "age"; drop']}),
            ("lineage_node_stats", {"isin": {"node_id": ["größe", "user's age"]}}),
            ("topline_metrics", {}), ("experiments", {}), ("feature_alerts", {})]):
        expected = expected_read(parquet, table, time_range=window, **filters)
        assert table != "serving_samples" or 0 < len(expected) < 500
        assert_same(sql.read(table, time_range=window, **filters), expected, table)


def pandas_stats(parquet: ParquetLake, window: TimeRange | None):
    """The Parquet path's statistics of the ranker's samples, with its columns and edges."""
    frame = parquet.serving_samples(RANKER, window)
    columns = [*(c for c in frame.columns if c not in FIXED), PREDICTION]
    edges = tricky_edges(frame, columns)
    return hourly_stats(frame, columns, edges), columns, edges


@pytest.mark.parametrize("backend, case", CASES)
def test_pushdown_stats_match_the_parquet_path(database, parquet, backend, case):
    sql = database(backend, case)
    for window in (DAY, TimeRange.of(ROW + NS, ROW + pd.Timedelta("30h")), None):
        stats, columns, edges = pandas_stats(parquet, window)
        assert_same_stats(hourly_feature_stats(sql, columns, edges, time_range=window,
                                               equals={"model_id": RANKER}), stats)
    pushed = hourly_aggregates(sql, "lineage_node_stats", ["value"], quantiles=False,
                               time_range=TimeRange.of(ROW, None))
    frame = parquet.read("lineage_node_stats", time_range=TimeRange.of(ROW, None))
    hours = frame.groupby(frame["ts"].dt.floor("h"))["value"]
    assert pushed["hour"].tolist() == hours.size().index.tolist()
    assert pushed["count"].tolist() == hours.size().tolist()
    np.testing.assert_allclose(pushed["mean"], hours.mean(), rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pushdown_is_identical_across_encodings(database, parquet, backend):
    _, columns, edges = pandas_stats(parquet, DAY)

    def pushed(case: str) -> pd.DataFrame:
        sql = database(backend, case)
        aggregates = hourly_aggregates(sql, "serving_samples", columns, time_range=DAY,
                                       equals={"model_id": RANKER})
        histograms = hourly_histograms(sql, "serving_samples", columns, edges, time_range=DAY,
                                       equals={"model_id": RANKER})
        return aggregates.merge(histograms, on=["hour", "column"], how="outer",
                                suffixes=("", "_bin"))

    cases = SQLITE_CASES if backend == "sqlite" else POSTGRES_CASES
    baseline = pushed(cases[0])
    assert len(baseline) and str(baseline["hour"].dtype) == "datetime64[ns, UTC]"
    for case in cases[1:]:
        pd.testing.assert_frame_equal(pushed(case), baseline, check_exact=True, obj=case)


# --- sub-second instants ------------------------------------------------------------------------

FINE_CASES = [("sqlite", "iso_naive_fraction", "ns"), ("sqlite", "epoch_ns", "ns"),
              ("sqlite", "iso_offset_fraction", "us"), ("sqlite", "epoch_us", "us"),
              ("sqlite", "epoch_real_s", "us"),
              *(pytest.param("postgres", c, "us", marks=pytest.mark.postgres)
                for c in ("timestamptz", "timestamp"))]


@contextlib.contextmanager
def written(backend: str, tmp_path, tables: dict, encoding: Encoding):
    """A SqlLake holding ``tables``, all in ``encoding``, in a new database."""
    with new_database(backend, tmp_path) as (url, schema):
        write_sql(url, tables, dict.fromkeys(tables, encoding), schema=schema)
        lake = SqlLake(url, schema=schema)
        yield lake
        lake.engine.dispose()


def node_stats(ts) -> pa.Table:
    """``lineage_node_stats`` rows at ``ts``, valued 1, 2, ..."""
    n = len(ts)
    return pa.table({"ts": pa.array(ts, pa.timestamp("ns", tz="UTC")), "node_id": ["n"] * n,
                     "stat": ["mean"] * n, "value": np.arange(1.0, n + 1)})


@pytest.mark.parametrize("backend, case, unit", FINE_CASES)
def test_sub_second_instants_are_exact(tmp_path, backend, case, unit):
    step, hour = pd.Timedelta(1, unit), START + pd.Timedelta("11h")
    ts = pd.DatetimeIndex([hour - step, hour, hour + step, hour + pd.Timedelta("1h") - step,
                           hour + pd.Timedelta("1h")])
    with written(backend, tmp_path, {"lineage_node_stats": node_stats(ts)},
                 Encoding(case)) as lake:
        def values(window=None) -> list[float]:
            return sorted(lake.read("lineage_node_stats", time_range=window)["value"])

        assert sorted(lake.read_arrow("lineage_node_stats")["ts"].to_pylist()) == list(ts)
        assert values(TimeRange.of(hour, hour + pd.Timedelta("1h"))) == [2, 3, 4]
        # bounds a nanosecond past rows: the first row is out, the last in
        assert values(TimeRange.of(hour + NS, hour + pd.Timedelta("1h") - step + NS)) == [3, 4]
        pushed = hourly_aggregates(lake, "lineage_node_stats", ["value"], quantiles=False)
        assert pushed["hour"].tolist() == [hour - pd.Timedelta("1h"), hour,
                                           hour + pd.Timedelta("1h")]
        assert pushed["count"].tolist() == [1, 3, 1] and pushed["sum"].tolist() == [1, 9, 5]
        within = hourly_aggregates(lake, "lineage_node_stats", ["value"], quantiles=False,
                                   time_range=TimeRange.of(hour + NS, None))
        assert within["count"].tolist() == [2, 1]


# --- refusals -----------------------------------------------------------------------------------

def assert_own_message(error: ContractError) -> None:
    """No driver's or pyarrow's wording in the reason (the file is the URL, driver named)."""
    for raw in ("pyarrow", "Arrow", "sqlite3", "psycopg2", "Could not convert", "Traceback"):
        assert raw not in error.reason


@pytest.mark.parametrize("backend, case, bad, shown", [
    ("sqlite", "iso_z", "2026-02-30T10:00:00Z", "'2026-02-30T10:00:00Z'"),
    ("sqlite", "iso_z", "yesterday", "'yesterday'"),
    ("sqlite", "iso_z", "2461100.5", "'2461100.5'"),  # SQLite would read a Julian day
    ("sqlite", "iso_naive", "2026-03-01T10:00:00+0200", "'2026-03-01T10:00:00+0200'"),
    ("sqlite", "iso_z", "2026-03-01T10:00:00.5.5Z", "'2026-03-01T10:00:00.5.5Z'"),
    ("sqlite", "epoch_s", 99_999_999_999, "99999999999"),  # seconds, after 2262
    ("sqlite", "rows", b"\x00", "X'00'"),
    pytest.param("postgres", "timestamptz", "infinity", "'infinity'",
                 marks=pytest.mark.postgres),
    pytest.param("postgres", "timestamp", "3000-01-01", "'3000-01-01 00:00:00'",
                 marks=pytest.mark.postgres),
])
def test_undecodable_timestamps_are_refused_where_they_are(tmp_path, backend, case, bad, shown):
    good = START + pd.Timedelta("1h") * np.arange(3)
    with written(backend, tmp_path, {"lineage_node_stats": node_stats(good)},
                 Encoding(case)) as lake:
        t = lake.table(TABLES["lineage_node_stats"])
        with lake.engine.begin() as conn:
            conn.execute(t.insert().values(ts=sa.literal(bad), node_id="n", stat="mean",
                                           value=9.0))
        after = TimeRange.of(START, None)
        for attempt in (lambda: lake.read("lineage_node_stats"),
                        lambda: lake.read("lineage_node_stats", time_range=after),
                        lambda: hourly_aggregates(lake, "lineage_node_stats", ["value"]),
                        lambda: hourly_histograms(lake, "lineage_node_stats", ["value"],
                                                  np.zeros((1, 2)), time_range=after)):
            with pytest.raises(ContractError) as info:
                attempt()
            error = info.value
            assert (error.table, error.column) == ("lineage_node_stats", "ts")
            assert error.file.endswith("table lineage_node_stats")
            assert f"unreadable timestamp {shown}" in error.reason
            assert "the contract allows" in error.reason
            assert_own_message(error)
        problems = [p for p in validate_lake(lake, check_artifacts=False)
                    if p.table == "lineage_node_stats"]
        assert [(p.column, shown in p.reason) for p in problems] == [("ts", True)]


def test_values_of_another_kind_are_refused_showing_them(tmp_path):
    runs = quoted_tables()["training_runs"]
    with written("sqlite", tmp_path, {"lineage_node_stats": node_stats([START]),
                                      "training_runs": runs}, Encoding("iso_z")) as lake:
        with lake.engine.begin() as conn:
            conn.execute(lake.table(TABLES["lineage_node_stats"]).insert().values(
                ts="2026-03-01T01:00:00Z", node_id="n", stat="mean", value=sa.literal("n/a")))
            conn.execute(lake.table(TABLES["training_runs"]).insert().values(
                training_run_id="run 3", model_id=RANKER, dataset_id="feed data",
                partitions='"2026-02-27"', started_at="2026-02-26", finished_at="2026-02-27"))
        for table, column, reason in [("lineage_node_stats", "value", "mixed types (float, str)"),
                                      ("training_runs", "partitions",
                                       "not a JSON array of strings: '\"2026-02-27\"'")]:
            with pytest.raises(ContractError, match=re.escape(reason)) as info:
                lake.read(table)
            assert (info.value.table, info.value.column) == (table, column)
            assert_own_message(info.value)


@pytest.mark.postgres
def test_postgres_time_columns_must_be_timestamps(tmp_path):
    with written("postgres", tmp_path, {"lineage_node_stats": node_stats([START])},
                 Encoding("epoch_s")) as lake:
        for attempt in (lambda: lake.read("lineage_node_stats"),
                        lambda: hourly_aggregates(lake, "lineage_node_stats", ["value"])):
            with pytest.raises(ContractError, match="stored as INTEGER, the contract allows "
                                                    "TIMESTAMP WITH TIME ZONE") as info:
                attempt()
            assert (info.value.table, info.value.column) == ("lineage_node_stats", "ts")
        problems = [p for p in validate_lake(lake, check_artifacts=False)
                    if p.table == "lineage_node_stats"]
        assert [(p.column, "timestamp" in p.reason) for p in problems] == [("ts", True)]
