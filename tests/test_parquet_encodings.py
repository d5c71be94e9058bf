"""The Parquet reader on every encoding freedom of the contract, file by file, in any mix.

Each test writes its files with plain pyarrow (never the simulator's writer), mixes
encodings inside one table as a lake grown by several writers would, and checks that
reads and push-down filters give the same rows and the contract's types as a canonical
encoding does.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.time_range import TimeRange

START = pd.Timestamp("2026-03-01", tz="UTC")
#: (unit, zone) of the timestamp encodings a writer may use; None = naive (meaning UTC)
TIME_ENCODINGS = [(u, z) for u in ("s", "ms", "us", "ns")
                  for z in (None, "UTC", "Asia/Kolkata", "America/New_York", "+05:30")]
STRING_ENCODINGS = ("string", "large_string", "string_view", "dictionary")


def _strings(values, encoding: str) -> pa.Array:
    array = pa.array(values, pa.string())
    if encoding in ("large_string", "string_view"):
        return array.cast(getattr(pa, encoding)())
    return array.dictionary_encode() if encoding == "dictionary" else array


def _times(instants: pd.DatetimeIndex, unit: str, zone: str | None) -> pa.Array:
    utc = pa.array(instants.as_unit("ns"), pa.timestamp("ns", tz="UTC"))
    return utc.cast(pa.timestamp(unit, tz=zone))  # naive: the UTC wall clock


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _alerts(instants, unit, zone, strings) -> pa.Table:
    n = len(instants)
    return pa.table({
        "detail": _strings([f"d{i}" for i in range(n)], strings),  # columns in any order
        "ts": _times(instants, unit, zone),
        "feature_name": _strings([f"f {i % 3}" for i in range(n)], strings),
        "alert_type": _strings(["null_rate"] * n, strings),
        "severity": _strings(["warning"] * n, strings),
        "extra column": pa.array(np.arange(n)),
    })


@pytest.fixture
def mixed_alerts(tmp_path):
    """``feature_alerts`` as one file per timestamp encoding (whole-second instants, so that
    every unit holds them exactly), with strings of rotating encodings, files at any depth."""
    lake = tmp_path / "lake"
    expected = []
    for i, (unit, zone) in enumerate(TIME_ENCODINGS):
        instants = pd.date_range(START + pd.Timedelta(hours=i), periods=6, freq="10min")
        table = _alerts(instants, unit, zone, STRING_ENCODINGS[i % len(STRING_ENCODINGS)])
        depth = "/".join(["deeper"] * (i % 3))
        _write(lake / "feature_alerts" / depth / f"writer-{i}.parquet", table)
        expected.append(pd.DataFrame({"ts": instants, "detail": [f"d{j}" for j in range(6)]}))
    _write(lake / "feature_alerts" / "empty.parquet",
           _alerts(pd.DatetimeIndex([], tz="UTC"), "ms", None, "string"))  # a zero-row file
    return ParquetLake(str(lake)), pd.concat(expected, ignore_index=True)


def test_every_timestamp_unit_and_zone_reads_as_the_same_utc_instants(mixed_alerts):
    reader, expected = mixed_alerts
    read = reader.read_arrow("feature_alerts")
    assert read.schema.field("ts").type == pa.timestamp("ns", tz="UTC")
    assert read.schema.field("feature_name").type == pa.string()
    assert sorted(read.to_pandas()["ts"]) == sorted(expected["ts"])


@pytest.mark.parametrize("start, end", [
    ("2026-03-01T03:00:00Z", "2026-03-01T09:30:00Z"),
    ("2026-03-01T05:10:00.5Z", "2026-03-01T05:40:00.000001Z"),  # bounds between whole seconds
    ("2026-03-01T10:20:00+05:30", None),  # the bound in another zone is the same instant
    (None, "2026-03-01T02:00:00Z"),
])
def test_time_filters_are_exact_whatever_the_stored_unit_or_zone(mixed_alerts, start, end):
    reader, expected = mixed_alerts
    window = TimeRange.of(start, end)
    read = reader.read("feature_alerts", columns=["ts", "detail"], time_range=window)
    keep = pd.Series(True, index=expected.index)
    if window.start is not None:
        keep &= expected["ts"] >= window.start
    if window.end is not None:
        keep &= expected["ts"] < window.end
    assert keep.any() and not keep.all()
    assert sorted(read["ts"]) == sorted(expected.loc[keep, "ts"])


def test_string_filters_work_on_every_string_encoding(mixed_alerts):
    reader, expected = mixed_alerts
    one = reader.read("feature_alerts", equals={"feature_name": "f 1"})
    some = reader.read("feature_alerts", isin={"feature_name": ["f 0", "f 2"]})
    assert len(one) == len(expected) // 3 and set(one["feature_name"]) == {"f 1"}
    assert len(some) == 2 * len(expected) // 3


def test_a_view_typed_column_reads_through_a_filter_that_cuts_its_file(tmp_path):
    """A ``string_view`` column read, not filtered on, from a file the time filter cuts in two
    (Arrow has no kernel to filter views: a file wholly inside the window hid this)."""
    instants = pd.date_range(START, periods=6, freq="10min")
    lake = tmp_path / "lake"
    _write(lake / "feature_alerts" / "views.parquet",
           _alerts(instants, "us", "UTC", "string_view"))
    read = ParquetLake(str(lake)).read("feature_alerts", columns=["ts", "detail"],
                                       time_range=TimeRange(instants[2], instants[4]))
    assert list(read["detail"]) == ["d2", "d3"]


def _serving(model_id: str, day: str, features: dict[str, pa.Array], n: int,
             strings: str) -> pa.Table:
    ts = pd.date_range(pd.Timestamp(day, tz="UTC"), periods=n, freq="h")
    return pa.table({
        "ts": _times(ts, "ms", None),
        "snapshot_id": _strings([f"{model_id}@1"] * n, strings),
        "request_id": _strings([f"{model_id}/{day}/{i}" for i in range(n)], strings),
        "segment": _strings(["main"] * n, strings),
        "prediction": pa.array(np.linspace(0, 1, n)),
        "label": pa.array([None] * n, pa.float64()),
        **features,
    })


def test_partitions_url_encoded_per_model_schemas_and_feature_widths(tmp_path):
    """Hive values URL-encoded, an extra partition key, several files per partition, the
    partition key stored inside a file too, features float16/float32/float64, each model
    with its own columns."""
    lake = tmp_path / "lake"
    root = lake / "serving_samples"
    odd = "ads \"ctr\" v2.ü's"
    n = 4
    _write(root / f"model_id={quote(odd)}" / "date=2026-03-01" / "region=eu" / "a.parquet",
           _serving(odd, "2026-03-01", {"größe": pa.array(np.ones(n), pa.float16())}, n,
                    "dictionary"))
    _write(root / f"model_id={quote(odd)}" / "date=2026-03-01" / "region=us" / "b.parquet",
           _serving(odd, "2026-03-01", {"größe": pa.array(np.full(n, 2.0), pa.float64())}, n,
                    "large_string"))
    inside = _serving(odd, "2026-03-02", {"größe": pa.array(np.full(n, 3.0), pa.float32())}, n,
                      "string").append_column("model_id", _strings([odd] * n, "dictionary"))
    _write(root / f"model_id={quote(odd)}" / "date=2026-03-02" / "c.parquet", inside)
    _write(root / "model_id=ranker" / "date=2026-03-01" / "d.parquet",
           _serving("ranker", "2026-03-01", {"clicks.7d": pa.array(np.zeros(n), pa.float32())},
                    n, "string"))
    reader = ParquetLake(str(lake))
    read = reader.read_arrow("serving_samples", equals={"model_id": odd},
                             time_range=TimeRange.of("2026-03-01T01:00Z", "2026-03-02T02:00Z"))
    assert read.schema.field("größe").type == pa.float32()
    frame = read.to_pandas()
    assert set(frame["model_id"]) == {odd}
    assert sorted(frame["größe"]) == [1.0] * 3 + [2.0] * 3 + [3.0] * 2
    assert set(frame["region"].dropna()) == {"eu", "us"}  # the extra key is an extra column
    assert "clicks.7d" not in reader.serving_columns(odd)
    assert "clicks.7d" in reader.serving_columns("ranker")
    by_date = reader.read("serving_samples", equals={"model_id": odd, "date": "2026-03-02"})
    assert len(by_date) == n


@pytest.mark.parametrize("width", [pa.int8(), pa.uint16(), pa.int32(), pa.int64()])
def test_integer_columns_of_any_width(tmp_path, width):
    lake = tmp_path / "lake"
    _write(lake / "model_features" / "part.parquet", pa.table({
        "model_id": ["m", "m"], "position": pa.array([0, 1], width),
        "feature_name": ["a", "b"]}))
    read = ParquetLake(str(lake)).read_arrow("model_features")
    assert read.schema.field("position").type == pa.int32()
    assert read["position"].to_pylist() == [0, 1]


def test_a_timestamp_stored_as_text_is_refused_naming_the_file_and_what_is_allowed(tmp_path):
    lake = tmp_path / "lake"
    _write(lake / "feature_alerts" / "bad.parquet", pa.table({
        "ts": ["2026-03-01T00:00:00Z"], "feature_name": ["f"], "alert_type": ["x"],
        "severity": ["info"], "detail": [""]}))
    with pytest.raises(ContractError) as raised:
        ParquetLake(str(lake)).read("feature_alerts", time_range=TimeRange.of(START, None))
    error = raised.value
    assert error.column == "ts" and error.file.endswith("bad.parquet")
    assert "string" in error.reason and "timestamp" in error.reason



def test_an_integer_too_wide_for_the_contract_is_refused_in_plain_words(tmp_path):
    lake = tmp_path / "lake"
    _write(lake / "model_features" / "wide.parquet", pa.table({
        "model_id": ["m", "m"], "position": pa.array([0, 2**40], pa.int64()),
        "feature_name": ["a", "b"]}))
    with pytest.raises(ContractError) as raised:
        ParquetLake(str(lake)).read("model_features")
    error = raised.value
    assert error.column == "position" and error.file.endswith("wide.parquet")
    assert error.reason == ("stored as int64 with values outside int32's range "
                            f"[-2147483648, 2147483647], e.g. {2**40}")
