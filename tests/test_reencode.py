"""The re-encoder itself (``tests/reencode.py``): every freedom it draws really changes the files,
and plain pyarrow reads them back to the same logical content. Without this, a metamorphic test
that passes could be comparing a lake with itself, and one that fails could be our bug."""

from __future__ import annotations

import dataclasses
import datetime
import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import reencode as R
from hawkeye_dagster.contract import TABLES
from lake_factory import RANKER, lake_tables, logical, snapshot_bytes, write_lake


@pytest.fixture(scope="module")
def content() -> R.Logical:
    return logical(lake_tables())


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_draw_covers_every_option(content):
    """Over 40 seeds every option of every freedom is drawn at least once."""
    seen: dict[str, set] = {}
    for seed in range(40):
        encoding = R.seeded_encoding(content, seed)
        items = [*((f"writer.{k}", v) for t in encoding.tables.values() for w in t.writers
                   for k, v in dataclasses.asdict(w).items()),
                 *((f"layout.{k}", v) for t in encoding.tables.values()
                   for k, v in dataclasses.asdict(t.layout).items()),
                 *((f"snapshot.{k}", v) for s in encoding.snapshots.values()
                   for k, v in dataclasses.asdict(s).items()),
                 *((f"lake.{k}", getattr(encoding, k)) for k in R.LAKE_OPTIONS)]
        for key, value in items:
            seen.setdefault(key, set()).add(tuple(value) if isinstance(value, list) else value)
    options = {**{f"writer.{k}": v for k, v in R.WRITER_OPTIONS.items()},
               **{f"layout.{k}": v for k, v in R.LAYOUT_OPTIONS.items()},
               **{f"snapshot.{k}": v for k, v in R.SNAPSHOT_OPTIONS.items()},
               **{f"lake.{k}": v for k, v in R.LAKE_OPTIONS.items()}}
    missing = {k: set(v) - seen.get(k, set()) for k, v in options.items()}
    assert not {k: v for k, v in missing.items() if v}


#: for a writer option, what the written file shows: ``check(schema_arrow, parquet_file)``
_SHOWS = {
    # Parquet has no seconds: pyarrow stores an Arrow timestamp[s] as milliseconds
    ("time_unit", "s"): lambda s, f: s.field("ts").type.unit == "ms",
    ("time_unit", "ms"): lambda s, f: s.field("ts").type.unit == "ms",
    ("time_unit", "ns"): lambda s, f: s.field("ts").type.unit == "ns",
    ("time_zone", None): lambda s, f: s.field("ts").type.tz is None,
    ("time_zone", "America/New_York"): lambda s, f: s.field("ts").type.tz == "America/New_York",
    ("time_zone", "+05:30"): lambda s, f: s.field("ts").type.tz == "+05:30",
    ("int96", True): lambda s, f: f.schema.column(f.schema_arrow.get_field_index("ts"))
    .physical_type == "INT96",
    ("strings", "large_string"): lambda s, f: s.field("request_id").type == pa.large_string(),
    ("strings", "string_view"): lambda s, f: s.field("request_id").type == pa.string_view(),
    ("strings", "dictionary8"): lambda s, f: pa.types.is_dictionary(s.field("segment").type),
    ("strings", "dictionary32"): lambda s, f: s.field("request_id").type
    == pa.dictionary(pa.int32(), pa.string()),
    ("features_float64", True): lambda s, f: s.field("größe").type == pa.float64(),
    ("declare_not_null", False): lambda s, f: all(x.nullable for x in s),
    ("column_order", "reversed"): lambda s, f: s.names[-1] == "ts",
    ("keys_in_file", True): lambda s, f: {"model_id", "date"} <= set(s.names),
    ("extra_columns", ("__index_level_0__", "shard")): lambda s, f: "shard" in s.names,
    ("version", "1.0"): lambda s, f: f.metadata.format_version == "1.0",
    ("data_page_version", "2.0"): lambda s, f: True,
    ("compression", "zstd"): lambda s, f: f.metadata.row_group(0).column(0).compression == "ZSTD",
    ("statistics", False): lambda s, f: not f.metadata.row_group(0).column(0).is_stats_set,
    ("row_group_size", 64): lambda s, f: f.metadata.num_row_groups > 1,
    ("store_schema", False): lambda s, f: b"ARROW:schema" not in (f.metadata.metadata or {}),
}


@pytest.mark.parametrize("name, option", [(k, v) for k, v in _SHOWS])
def test_each_writer_option_shows_in_the_file_and_reads_back(name, option, content, tmp_path):
    """A writer option changes the stored file as it says, and the file reads back equal."""
    spec = TABLES["serving_samples"]
    key, table = next((k, t) for k, t in content.tables["serving_samples"].items()
                      if k[0] == RANKER)
    writer = dataclasses.replace(R.PLAIN_WRITER, **{name: option})
    physical = R.encode_file(spec, table, writer, random.Random(0), set(table.column_names))
    path = tmp_path / "f.parquet"
    pq.write_table(physical, path, **R.parquet_options(physical, writer))
    stored = pq.ParquetFile(path)
    assert _SHOWS[name, option](stored.schema_arrow, stored)
    read = stored.read()
    for k, value in zip(spec.partition_keys, key):
        if k not in read.column_names:
            read = read.append_column(k, pa.array([value] * read.num_rows))
    assert R.partitions(spec, [read]) == {key: table}


def test_integers_and_timestamps_keep_their_values():
    """Integers widen until their values fit; a unit too coarse for the instants moves finer."""
    steps = pa.chunked_array([pa.array([0, 300], pa.int64())])
    assert R.int_type(steps, "int8") == pa.int16()
    assert R.int_type(steps, "uint8") == pa.uint16()
    assert R.int_type(pa.chunked_array([pa.array([-1], pa.int64())]), "uint32") == pa.int32()
    ts = pa.chunked_array([pa.array([1_500_000_000], pa.timestamp("ns", "UTC"))])
    assert R.exact_unit(ts, "s") == "ms"
    assert R.exact_unit(ts.cast(pa.timestamp("ms", "UTC")), "s") == "ms"


@pytest.mark.parametrize("batch", R.SNAPSHOT_OPTIONS["batch"][1:])
@pytest.mark.parametrize("output", R.SNAPSHOT_OPTIONS["output"])
def test_reexported_snapshot_computes_the_same(batch, output):
    """Another batch declaration and output shape; same parameter names, weights and outputs."""
    original = snapshot_bytes(3, "binary_classification")
    data = R.reexport(original, batch, output)
    program = torch.export.load(io.BytesIO(data))
    assert R.program_differences(original, data) == []
    assert list(program.state_dict) == list(torch.export.load(io.BytesIO(original)).state_dict)
    (constraint,) = program.range_constraints.values()
    assert constraint.upper == {"bounded": R.BOUNDED_MAX, "tight": R.TIGHT_MAX}.get(
        batch, constraint.upper) > 100
    y = program.module()(torch.zeros(9, 3))
    assert y.shape == ((9,) if output == "batch" else (9, 1))


def test_differences_sees_every_kind_of_change(content):
    """The checker can fail: a changed feature value, instant, string, row or weight is seen."""
    def changed(table_name, change):
        tables = dict(content.tables)
        tables[table_name] = {k: change(t) for k, t in tables[table_name].items()}
        return R.Logical(tables, content.artifacts)

    def set_first(column, value):
        def change(t):
            if column not in t.column_names:
                return t
            values = t[column].to_pylist()
            values[0] = value(values[0])
            return t.set_column(t.schema.get_field_index(column), column,
                                pa.array(values, t.schema.field(column).type))
        return change

    one_us = datetime.timedelta(microseconds=1)
    cases = [changed("serving_samples", set_first("größe", lambda v: v + 1e-3)),
             changed("lineage_node_stats", set_first("ts", lambda v: v + one_us)),
             changed("models", set_first("segment", lambda v: v + " ")),
             changed("training_metrics", lambda t: t.slice(1)),
             R.Logical(content.tables, {**content.artifacts,
                                        "ranker@1": snapshot_bytes(3, "binary_classification",
                                                                   seed=1)})]
    assert R.differences(content, content) == []
    for case in cases:
        assert R.differences(content, case)


@settings(max_examples=8, deadline=None, database=None,
          phases=(Phase.explicit, Phase.generate),  # shrinking re-writes whole lakes: minutes
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_drawn_encoding_reads_back_equal(data, content, tmp_path_factory):
    """Hypothesis draws whole-lake encodings; each reads back (plain pyarrow) as the same content
    and really differs from the canonical encoding in stored types."""
    encoding = data.draw(R.lake_encodings(content))
    root = R.write_encoded(tmp_path_factory.mktemp("drawn"), content, encoding)
    assert R.differences(content, root) == [], R.encoding_summary(encoding)
    canonical = R.write_encoded(tmp_path_factory.mktemp("canonical"), content,
                                R.canonical_encoding(content))
    if encoding != R.canonical_encoding(content):
        assert _files(root).keys() != _files(canonical).keys() or \
            R.stored_types(root) != R.stored_types(canonical)


def test_same_seed_same_files(tmp_path):
    """``reencode(src, dst, seed)`` is reproducible to the byte (``file://`` artifact URLs aside,
    which name the folder)."""
    src = write_lake(tmp_path / "src")
    first, second = (R.reencode(src, tmp_path / name, 7) for name in ("a", "b"))
    assert first == second
    a, b = (_files(tmp_path / name) for name in ("a", "b"))
    assert a.keys() == b.keys()
    assert {k for k in a if a[k] != b[k]} <= {k for k in a if k.startswith("snapshots/")}
    artifacts = [pq.read_table(tmp_path / name / "snapshots")["artifact"].to_pylist()
                 for name in ("a", "b")]
    assert artifacts[0] == [x.replace("/b/", "/a/") for x in artifacts[1]]
    assert R.reencode(src, tmp_path / "c", 8) != first


def test_canonical_encoding_is_how_the_plain_writers_store_it(tmp_path):
    """The baseline of the metamorphic tests stores files the way the simulator's canonical
    encoding and ``write_lake`` do: same paths and stored types."""
    plain = write_lake(tmp_path / "plain")
    canonical = write_lake(tmp_path / "canonical",
                           encoding=R.canonical_encoding(logical(lake_tables())))
    parquet = {k for k in _files(plain) if k.endswith(".parquet")}
    assert parquet == {k for k in _files(canonical) if k.endswith(".parquet")}
    assert R.stored_types(plain) == R.stored_types(canonical)
    assert R.differences(plain, canonical) == []


def test_reencoding_a_reencoded_simulated_lake(simulated, tmp_path):
    """Twice over, from a simulated lake (varied snapshots: AUTO, DYNAMIC, bounded) through every
    freedom and back through them: the content stays the simulator's. The second pass reads
    the first's snapshots with the project's loader (``Dim.DYNAMIC`` ones among them)."""
    lake, _ = simulated("demo")
    once = R.reencode(lake, tmp_path / "once", 3)
    assert "dynamic" in {s.batch for s in once.snapshots.values()}
    R.reencode(tmp_path / "once", tmp_path / "twice", 4)
    assert R.differences(lake, tmp_path / "twice") == [], R.encoding_summary(once)
    assert R.stored_types(tmp_path / "twice") != R.stored_types(lake)


def test_write_lake_with_an_encoding_keeps_the_content(tmp_path):
    """``lake_factory.write_lake(encoding=...)`` goes through the re-encoder's writer."""
    plain = write_lake(tmp_path / "plain")
    for seed in range(3):
        encoded = write_lake(tmp_path / f"encoded-{seed}", encoding=seed)
        assert R.differences(plain, encoded) == []
        assert R.stored_types(encoded) != R.stored_types(plain)
