"""ParquetLake: contract types, filters pushed down, per-model schemas, any writer's layout."""

from __future__ import annotations

import shutil

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from hawkeye_dagster.contract import TABLES
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.conform import ARROW_TYPES, TIMESTAMP
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.time_range import TimeRange
from lake_factory import ADS, FEATURES, RANKER, START, lake_tables, write_lake


@pytest.fixture(scope="module")
def tables():
    return lake_tables()


@pytest.fixture(scope="module")
def lake(tmp_path_factory, tables) -> ParquetLake:
    root = write_lake(tmp_path_factory.mktemp("lake"), tables, files_per_partition=2)
    return ParquetLake(str(root))


def frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas()


def test_every_table_reads_with_the_contract_types(lake, tables):
    assert lake.tables() == set(TABLES)
    for name, spec in TABLES.items():
        table = lake.read_arrow(name)
        for column in spec.columns:
            assert table.schema.field(column.name).type == ARROW_TYPES[column.kind], (name, column)
        assert table.column_names[: len(spec.columns)] == list(spec.column_names)
        stored = tables[name]
        rows = sum(t.num_rows for t in stored.values()) if isinstance(stored, dict) \
            else stored.num_rows
        assert table.num_rows == rows, name


def test_union_of_per_model_feature_columns(lake):
    table = lake.read_arrow("serving_samples")
    features = sorted(set(FEATURES[RANKER]) | set(FEATURES[ADS]))
    assert table.column_names[8:] == features
    assert all(table.schema.field(f).type == pa.float32() for f in features)
    data = frame(table)
    ads = data[data["model_id"] == ADS]
    assert ads["größe"].isna().all() and ads["dwell time"].notna().all()
    assert lake.serving_columns(RANKER)[8:] == sorted(FEATURES[RANKER])


def test_one_model_one_day_matches_the_stored_rows(lake, tables):
    day = TimeRange.of("2026-03-02", "2026-03-03")
    got = frame(lake.read_arrow("serving_samples", equals={"model_id": ADS}, time_range=day))
    stored = tables["serving_samples"][ADS].to_pandas()
    want = stored[stored["date"] == "2026-03-02"]
    assert sorted(got.columns[8:]) == sorted(FEATURES[ADS])
    assert got["request_id"].tolist() == want["request_id"].tolist()
    np.testing.assert_array_equal(got["dwell time"], want["dwell time"])
    assert (got["ts"].dt.tz is not None) and got["ts"].min() >= day.start


def test_time_range_is_half_open_on_exact_boundaries(lake, tables):
    stored = tables["serving_samples"][RANKER].to_pandas()
    start, end = stored["ts"].iloc[10], stored["ts"].iloc[80]  # spans the two days
    got = frame(lake.read_arrow("serving_samples", equals={"model_id": RANKER},
                                time_range=TimeRange.of(start, end), columns=["ts"]))
    assert len(got) == 70 and got["ts"].min() == start and got["ts"].max() < end
    none = lake.read_arrow("serving_samples", time_range=TimeRange.of(end, end))
    assert none.num_rows == 0


def test_filters_on_columns_and_lists(lake, tables):
    got = frame(lake.read_arrow("lineage_node_stats", equals={"stat": "mean"},
                                isin={"node_id": ["raw.clicks", "größe"]}, columns=["node_id"]))
    assert set(got["node_id"]) == {"raw.clicks", "größe"} and len(got) == 2 * 48
    empty = lake.read_arrow("models", isin={"model_id": []})
    assert empty.num_rows == 0 and empty.schema.field("task").type == pa.string()
    training = lake.training_data("feed data", partitions=["2026-02-28"])
    assert set(training["partition"]) == {"2026-02-28"} and len(training) == 20


def test_partition_pruning_never_opens_other_partitions(tmp_path, tables):
    root = write_lake(tmp_path / "lake", tables, artifacts=False)
    # a corrupt file in another model's folder and in another day of this model
    (root / "serving_samples" / f"model_id={ADS}" / "date=2026-03-01" / "bad.parquet") \
        .write_bytes(b"not parquet")
    (root / "serving_samples" / f"model_id={RANKER}" / "date=2026-03-02" / "bad.parquet") \
        .write_bytes(b"")
    lake = ParquetLake(str(root))
    got = lake.read_arrow("serving_samples", equals={"model_id": RANKER},
                          time_range=TimeRange.of(START, START + pd.Timedelta("1D")))
    assert got.num_rows == 72
    with pytest.raises(ContractError) as info:
        lake.read_arrow("serving_samples", equals={"model_id": RANKER})
    assert info.value.table == "serving_samples"
    assert info.value.file.endswith(f"model_id={RANKER}/date=2026-03-02/bad.parquet")
    assert "empty file" in info.value.reason


def test_timestamps_of_any_unit_and_zone_become_utc_nanoseconds(tmp_path, tables):
    instant = pd.Timestamp("2026-03-01 12:30:00.123456", tz="UTC")
    variants = {
        "naive ns": pa.array([instant.tz_convert(None).value], pa.timestamp("ns")),
        "ms Paris": pa.array([instant.value // 10**6], pa.timestamp("ms", tz="Europe/Paris")),
        "s": pa.array([instant.value // 10**9], pa.timestamp("s")),
    }
    for label, ts in variants.items():
        root = tmp_path / label.replace(" ", "_")
        changed = dict(tables, lineage_changes=tables["lineage_changes"].set_column(0, "ts", ts))
        write_lake(root, changed, artifacts=False)
        got = ParquetLake(str(root)).read_arrow("lineage_changes")["ts"]
        assert got.type == TIMESTAMP
        expected = {"naive ns": instant, "ms Paris": instant.floor("ms"),
                    "s": instant.floor("s")}[label]
        assert got[0].value == expected.value, label


def test_wider_ints_and_doubles_are_cast_to_the_contract(tmp_path, tables):
    features = tables["model_features"]
    wide = features.set_column(1, "position", features["position"].cast(pa.int64()))
    serving = {m: t.set_column(t.num_columns - 1, t.column_names[-1],
                               t.column(t.num_columns - 1).cast(pa.float64()))
               for m, t in tables["serving_samples"].items()}
    root = write_lake(tmp_path / "lake", dict(tables, model_features=wide,
                                              serving_samples=serving), artifacts=False)
    lake = ParquetLake(str(root))
    assert lake.read_arrow("model_features").schema.field("position").type == pa.int32()
    got = lake.read_arrow("serving_samples", equals={"model_id": RANKER})
    assert got.schema.field(FEATURES[RANKER][-1]).type == pa.float32()
    np.testing.assert_allclose(got[FEATURES[RANKER][-1]].to_numpy(),
                               tables["serving_samples"][RANKER][FEATURES[RANKER][-1]].to_numpy())


def test_a_value_that_does_not_fit_names_its_file_and_column(tmp_path, tables):
    features = tables["model_features"]
    huge = features.set_column(1, "position", pa.array([2**40] * features.num_rows, pa.int64()))
    root = write_lake(tmp_path / "lake", dict(tables, model_features=huge), artifacts=False)
    with pytest.raises(ContractError) as info:
        ParquetLake(str(root)).read_arrow("model_features")
    assert info.value.column == "position"
    assert info.value.file == f"{root}/model_features/part-0.parquet"


def test_mistyped_column_names_file_and_column(tmp_path, tables):
    models = tables["models"]
    bad = models.set_column(3, "task", pa.array([1, 2, 3]))
    root = write_lake(tmp_path / "lake", dict(tables, models=bad), artifacts=False)
    with pytest.raises(ContractError) as info:
        ParquetLake(str(root)).read_arrow("models")
    assert (info.value.table, info.value.column) == ("models", "task")
    assert info.value.file == f"{root}/models/part-0.parquet"


def test_partition_keys_repeated_inside_files(tmp_path, tables):
    root = write_lake(tmp_path / "lake", tables, keys_in_files=True, artifacts=False)
    lake = ParquetLake(str(root))
    got = frame(lake.read_arrow("serving_samples", equals={"model_id": ADS}))
    assert set(got["model_id"]) == {ADS} and set(got["date"]) == {"2026-03-01", "2026-03-02"}
    assert list(got.columns).count("model_id") == 1


def test_uri_encoded_partition_folders_from_write_dataset(tmp_path, tables):
    root = tmp_path / "lake"
    write_lake(root, {k: v for k, v in tables.items() if k != "serving_samples"}, artifacts=False)
    for model_id, table in tables["serving_samples"].items():
        ds.write_dataset(table, root / "serving_samples", format="parquet",
                         partitioning=["model_id", "date"], partitioning_flavor="hive",
                         basename_template=f"{abs(hash(model_id))}-{{i}}.parquet",
                         existing_data_behavior="overwrite_or_ignore")
    assert any("%20" in p.name for p in (root / "serving_samples").iterdir())  # encoded
    got = frame(ParquetLake(str(root)).read_arrow("serving_samples", equals={"model_id": ADS}))
    assert len(got) == tables["serving_samples"][ADS].num_rows and set(got["model_id"]) == {ADS}


def test_files_without_statistics_filter_exactly(tmp_path, tables):
    root = tmp_path / "lake"
    stats = tables["lineage_node_stats"]
    (root / "lineage_node_stats").mkdir(parents=True)
    pq.write_table(stats, root / "lineage_node_stats" / "a.parquet", write_statistics=False)
    lake = ParquetLake(str(root))
    window = TimeRange.of(START + pd.Timedelta("3h"), START + pd.Timedelta("5h"))
    got = frame(lake.read_arrow("lineage_node_stats", time_range=window, columns=["ts"]))
    assert len(got) == 2 * len(stats.to_pandas()["node_id"].unique()) * 3
    assert got["ts"].min() == window.start and got["ts"].max() < window.end


def test_missing_tables_columns_and_folders(tmp_path, tables):
    root = write_lake(tmp_path / "lake", {k: v for k, v in tables.items()
                                          if k not in ("feature_alerts", "models")},
                      artifacts=False)
    lake = ParquetLake(str(root))
    alerts = lake.read_arrow("feature_alerts")  # optional: absent reads as empty
    assert alerts.num_rows == 0
    assert alerts.column_names == list(TABLES["feature_alerts"].column_names)
    with pytest.raises(ContractError, match="table missing") as info:
        lake.read_arrow("models")
    assert info.value.table == "models"
    with pytest.raises(ContractError) as info:
        lake.read_arrow("experiments", columns=["ts", "nope"])
    assert info.value.column == "nope"
    with pytest.raises(ContractError, match="not found"):
        open_lake(lake=str(tmp_path / "absent"))
    with pytest.raises(ValueError):
        open_lake()
    empty = lake.read_arrow("serving_samples", equals={"model_id": "unknown"},
                            columns=["ts", "clicks.7d"])
    assert empty.num_rows == 0 and empty.schema.field("clicks.7d").type == pa.float32()


def test_artifacts_resolve_inside_the_lake(lake):
    path = lake.resolve_artifact("artifacts/ads@1.pt2")
    assert path == f"{lake.location}/artifacts/ads@1.pt2"
    with lake.open_artifact("artifacts/ads@1.pt2") as fh:
        assert fh.read(2) == b"PK"
    assert lake.resolve_artifact("s3://bucket/x.pt2") == "s3://bucket/x.pt2"
    with pytest.raises(ContractError, match="leaves the lake"):
        lake.resolve_artifact("../outside.pt2")


def test_fsspec_url_lake_reads_like_a_local_one(lake, tmp_path):
    memory = fsspec.filesystem("memory")
    memory.put(lake.location, "/hawkeye-test-lake", recursive=True)
    try:
        remote = open_lake(lake="memory://hawkeye-test-lake")
        assert remote.tables() == lake.tables()
        day = TimeRange.of("2026-03-01", "2026-03-02")
        pd.testing.assert_frame_equal(
            remote.serving_samples(ADS, day), lake.serving_samples(ADS, day))
        with remote.open_artifact("artifacts/ads@1.pt2") as fh:
            assert fh.read(2) == b"PK"
    finally:
        memory.rm("/hawkeye-test-lake", recursive=True)


def test_a_lake_that_grows_is_reread(tmp_path, tables):
    root = write_lake(tmp_path / "lake", tables, artifacts=False)
    lake = ParquetLake(str(root))
    before = lake.read_arrow("feature_alerts").num_rows
    shutil.copy(root / "feature_alerts" / "part-0.parquet", root / "feature_alerts" / "new.parquet")
    assert lake.read_arrow("feature_alerts").num_rows == 2 * before


@pytest.mark.parametrize("url", ["file://{path}", "file://localhost{path}"])
def test_file_url_artifacts_are_local_files_with_percent_escapes_decoded(lake, tmp_path, url):
    folder = tmp_path / "snapshots dir é"
    folder.mkdir()
    (folder / "m 1.pt2").write_bytes(b"model bytes")
    quoted = url.format(path=(folder / "m 1.pt2").as_uri().removeprefix("file://"))
    assert "%20" in quoted
    assert lake.resolve_artifact(quoted) == quoted  # absolute: not joined to the lake root
    with lake.open_artifact(quoted) as fh:
        assert fh.read() == b"model bytes"


def test_a_file_url_for_another_host_is_refused_naming_it(lake):
    with pytest.raises(ContractError, match="another host") as err:
        lake.open_artifact("file://models.example/m.pt2")
    assert err.value.file == "file://models.example/m.pt2"
