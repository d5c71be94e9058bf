"""An independent re-encoder: a telemetry lake's same logical content, stored the way other writers
store it.

Why: until now every lake that tests and benchmarks read came from our own simulator
(microsecond UTC timestamps, plain strings, one file per partition), so nothing showed that a lake
written by anyone else reads the same. This module rewrites a contract lake (a folder) into a new
folder with a seeded, reproducible draw of the encoding freedoms of ``hawkeye-telemetry/1``, and
reads lakes back with plain pyarrow, file by file (never through the project's reader), to check
that the logical content did not change.

Freedoms drawn per file (each table has 1-3 writers, each file is written by one of them):

- timestamps: unit s, ms, us or ns (a unit too coarse for the values moves to the next finer
  exact one, so instants never change; Parquet itself stores seconds as milliseconds); naive
  (meaning UTC), or tz-aware in UTC, ``America/New_York``, ``Asia/Kolkata``, ``+05:30`` or
  ``-08:00``; or legacy INT96;
- strings: ``string``, ``large_string``, ``string_view``, dictionary with int8 (widened when there
  are too many values) or int32 indices; ``training_runs.partitions`` as list or large_list;
- integers (``model_features.position``, ``training_metrics.step``): the contract's width, or
  int8..int64 or uint8..uint64 widened until the values fit;
- feature columns float32, or float64 cast from float32 (exact);
- fields with no null declared non-null or all nullable; columns in contract, reversed or
  shuffled order; rows shuffled or kept; partition keys repeated inside the file or not;
- 0-2 extra columns that readers must ignore (a string, an int16, a bool, a timestamp, pandas'
  ``__index_level_0__``);
- Parquet writer: format version 1.0, 2.4 or 2.6, data pages v1 or v2, compression (none, snappy,
  gzip, zstd, lz4, brotli), dictionary pages on or off, byte-stream-split floats, statistics on
  or off, row groups of 64 rows or one per file, with or without the stored Arrow schema (without
  it, dictionaries, large types and time zones are not restored on read).

Freedoms drawn per table (its layout):

- rows split into 1-4 files per partition at random cut points (some may hold no row); extra
  zero-row files; for partitioned tables a zero-row file in a partition folder holding no data;
- files at extra depth (folders that are not ``key=value``), above or below the Hive folders;
- an extra Hive key directly above the files (``writer=w0/``: an extra string column);
- Hive folders in contract or reversed order, their values raw, URL-quoted, or with every byte
  percent-encoded;
- file names ``part-N``, Spark-style ``part-0000N-<hex>.c000.snappy.parquet``, or with spaces and
  non-ASCII letters; writer debris that readers skip (``_SUCCESS``, hidden ``.crc`` files).

Freedoms drawn per lake and per snapshot:

- an extra table folder and a stray file at the root (ignored); an optional table with no rows
  (``feature_alerts``) absent, an empty folder, or a zero-row file;
- each ``.pt2`` copied, or re-exported (loaded with the project's safe loader, ``module()``, its
  checks of the old batch range dropped, the output reshaped by an edit of the graph's output, so
  parameter names and numbers stay the same)
  with another batch declaration (``Dim("batch")``, ``Dim("b", min=1, max=...)`` roomy or
  tight (256 rows: readers must chunk), ``Dim.AUTO``, ``Dim.DYNAMIC``, a ``ShapesCollection``)
  and output shape (``[batch]`` or ``[batch, 1]``);
  saved under a new folder (with spaces and non-ASCII letters), referenced by a relative path or
  a ``file://`` URL, and ``snapshots.artifact`` rewritten.

Use ``reencode(src, dst, seed)`` for a fixed seed, or draw with the hypothesis strategy
``lake_encodings(read_lake(src))`` and call ``reencode(src, dst, encoding)``. ``differences(a, b)``
(empty when ``logically_equal(a, b)``) compares two lakes; ``write_encoded(root, logical,
encoding)`` writes any logical content, which is what ``lake_factory.write_lake(encoding=...)``
uses.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hawkeye_dagster.contract import TABLES, Kind, TableSpec

#: canonical types of the logical content (features are float32)
CANONICAL = {Kind.TIMESTAMP: pa.timestamp("ns", tz="UTC"), Kind.STRING: pa.string(),
             Kind.FLOAT64: pa.float64(), Kind.FLOAT32: pa.float32(), Kind.INT32: pa.int32(),
             Kind.INT64: pa.int64(), Kind.STRING_LIST: pa.list_(pa.string())}
_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_UNITS = ("s", "ms", "us", "ns")
_INTS = {name: getattr(pa, name)() for name in
         ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")}
_EXTRA_TABLE = "audit_events"
_BOOL = (False, True)

# Every freedom and its options, canonical (the simulator's) first, so hypothesis shrinks
# towards the simulator's encoding and a failing example names the freedom that matters.
WRITER_OPTIONS: dict[str, tuple] = {
    "time_unit": ("us", "s", "ms", "ns"),
    "time_zone": ("UTC", None, "America/New_York", "Asia/Kolkata", "+05:30", "-08:00"),
    "int96": (False, True),
    "strings": ("string", "large_string", "string_view", "dictionary8", "dictionary32"),
    "lists": ("list", "large_list"),
    "integers": ("contract", "int8", "int16", "int32", "int64",
                 "uint8", "uint16", "uint32", "uint64"),
    "features_float64": _BOOL,
    "declare_not_null": (True, False),
    "column_order": ("contract", "reversed", "shuffled"),
    "shuffle_rows": _BOOL,
    "keys_in_file": _BOOL,
    "extra_columns": ((), ("writer_version",), ("__index_level_0__", "shard"),
                      ("ingested_at", "is_backfill")),
    "version": ("2.6", "1.0", "2.4"),
    "data_page_version": ("1.0", "2.0"),
    "compression": ("snappy", "none", "gzip", "zstd", "lz4", "brotli"),
    "dictionary_pages": (True, False),
    "byte_stream_split": _BOOL,
    "statistics": (True, False),
    "row_group_size": (None, 64),
    "store_schema": (True, False),
}
LAYOUT_OPTIONS: dict[str, tuple] = {
    "files_per_partition": (1, 2, 3, 4),
    "empty_files": _BOOL,
    "phantom_partition": _BOOL,
    "subfolders": ((), ("batch 0",), ("2026", "run ü"), ("spark-output",)),
    "subfolders_on_top": _BOOL,
    "extra_key": _BOOL,
    "key_order": ("contract", "reversed"),
    "quoting": ("raw", "quote", "every_byte"),
    "file_names": ("part", "spark", "odd"),
    "debris": _BOOL,
}
SNAPSHOT_OPTIONS: dict[str, tuple] = {
    "batch": ("keep", "dim", "bounded", "tight", "auto", "dynamic", "shapes"),
    "output": ("batch", "batch_1"),
    "reference": ("relative", "file_url"),
}
LAKE_OPTIONS: dict[str, tuple] = {
    "artifact_folder": ("artifacts", "model store/ü snapshots", "pt2"),
    "extra_table": _BOOL,
    "empty_optional": ("zero_row_file", "absent", "empty_folder"),
}
#: the largest batch a bounded ``Dim`` declares: roomy, or tight enough that readers must chunk
BOUNDED_MAX, TIGHT_MAX = 1 << 20, 256
#: the batch of the example input a snapshot is re-exported with (0 and 1 specialize)
EXAMPLE_BATCH = 5


@dataclass(frozen=True)
class Writer:
    """One writer's physical choices (see ``WRITER_OPTIONS``)."""

    time_unit: str
    time_zone: str | None
    int96: bool
    strings: str
    lists: str
    integers: str
    features_float64: bool
    declare_not_null: bool
    column_order: str
    shuffle_rows: bool
    keys_in_file: bool
    extra_columns: tuple[str, ...]
    version: str
    data_page_version: str
    compression: str
    dictionary_pages: bool
    byte_stream_split: bool
    statistics: bool
    row_group_size: int | None
    store_schema: bool


#: the canonical writer (every first option): how the simulator's canonical encoding stores files
PLAIN_WRITER = Writer(**{name: options[0] for name, options in WRITER_OPTIONS.items()})


@dataclass(frozen=True)
class Layout:
    """How one table's files are laid out (see ``LAYOUT_OPTIONS``)."""

    files_per_partition: int
    empty_files: bool
    phantom_partition: bool
    subfolders: tuple[str, ...]
    subfolders_on_top: bool
    extra_key: bool
    key_order: str
    quoting: str
    file_names: str
    debris: bool


@dataclass(frozen=True)
class TableEncoding:
    layout: Layout
    writers: tuple[Writer, ...]
    #: seeds the per-file draws: cut points, writer of each file, shuffles, names
    seed: int


@dataclass(frozen=True)
class SnapshotEncoding:
    batch: str
    output: str
    reference: str


@dataclass(frozen=True)
class LakeEncoding:
    tables: dict[str, TableEncoding]
    snapshots: dict[str, SnapshotEncoding]
    artifact_folder: str
    extra_table: bool
    empty_optional: str


@dataclass
class Logical:
    """A lake's content whatever its encoding: per table and partition (the partition keys'
    values, ``()`` for unpartitioned tables) one canonical Arrow table, rows sorted; and each
    snapshot's artifact bytes by ``snapshot_id``."""

    tables: dict[str, dict[tuple[str, ...], pa.Table]]
    artifacts: dict[str, bytes]


# --- drawing -----------------------------------------------------------------------------------

Pick = Callable[[Sequence], Any]


def draw_encoding(pick: Pick, logical: Logical) -> LakeEncoding:
    """An encoding of ``logical``, every choice made by ``pick(options)``: ``random.choice`` for
    fixed seeds, a hypothesis draw in :func:`lake_encodings`."""
    def options(cls, table: dict[str, tuple]):
        return cls(**{name: pick(values) for name, values in table.items()})

    tables = {name: TableEncoding(options(Layout, LAYOUT_OPTIONS),
                                  tuple(options(Writer, WRITER_OPTIONS)
                                        for _ in range(pick((1, 2, 3)))),
                                  pick(range(2**31)))
              for name in sorted(logical.tables)}
    snapshots = {sid: options(SnapshotEncoding, SNAPSHOT_OPTIONS)
                 for sid in sorted(logical.artifacts)}
    return LakeEncoding(tables, snapshots, **{k: pick(v) for k, v in LAKE_OPTIONS.items()})


def canonical_encoding(logical: Logical) -> LakeEncoding:
    """The simulator's canonical encoding: every first option (microsecond UTC timestamps, plain
    strings, contract widths, one file per partition, keys only in folder names, raw Hive
    values, snapshots copied to ``artifacts/<model>/<snapshot>.pt2``)."""
    return draw_encoding(lambda options: options[0], logical)


def seeded_encoding(logical: Logical, seed: int) -> LakeEncoding:
    return draw_encoding(random.Random(seed).choice, logical)


def lake_encodings(logical: Logical):
    """A hypothesis strategy of :class:`LakeEncoding` for ``logical``'s tables and snapshots."""
    from hypothesis import strategies as st

    @st.composite
    def encodings(draw):
        return draw_encoding(lambda values: draw(st.sampled_from(values)), logical)

    return encodings()


# --- reading, with plain pyarrow ---------------------------------------------------------------

def read_lake(root: str | Path) -> Logical:
    """The logical content of a lake folder, read file by file with ``pyarrow.parquet``.

    Hidden (``.``/``_``) files and folders are skipped and only ``*.parquet`` files read, as
    ``pyarrow.dataset`` does; ``key=value`` folders anywhere below the table folder give
    URL-decoded partition values; columns outside the contract (features aside) are dropped.
    """
    root = Path(root)
    tables: dict[str, dict[tuple[str, ...], pa.Table]] = {}
    for name in sorted(os.listdir(root)):
        if name in TABLES and (root / name).is_dir():
            tables[name] = _read_table(root / name, TABLES[name])
    artifacts = {}
    if "snapshots" in tables:
        for table in tables["snapshots"].values():
            for sid, artifact in zip(table["snapshot_id"].to_pylist(),
                                     table["artifact"].to_pylist()):
                artifacts[sid] = artifact_path(root, artifact).read_bytes()
    return Logical(tables, artifacts)


def read_table(root: str | Path, name: str) -> pa.Table:
    """One table of a lake folder as logical content, all partitions together."""
    return pa.concat_tables(_read_table(Path(root) / name, TABLES[name]).values(),
                            promote_options="permissive")


def artifact_path(root: Path, artifact: str) -> Path:
    """The file a ``snapshots.artifact`` value names: relative to the lake root, or a file URL."""
    if urlsplit(artifact).scheme == "file":
        return Path(unquote(urlsplit(artifact).path))
    return root / artifact


def _read_table(folder: Path, spec: TableSpec) -> dict[tuple[str, ...], pa.Table]:
    files = []
    for path in _parquet_files(folder):
        partition = dict(_hive(part) for part in path.relative_to(folder).parts[:-1]
                         if "=" in part)
        table = pq.ParquetFile(path).read()
        for key in spec.partition_keys:
            if key not in table.column_names:
                table = table.append_column(
                    key, pa.array([partition.get(key)] * table.num_rows, pa.string()))
        files.append(table)
    return partitions(spec, files)


def partitions(spec: TableSpec, tables: Sequence[pa.Table]) -> dict[tuple[str, ...], pa.Table]:
    """The logical partitions of a table stored as ``tables`` (any encoding, partition keys as
    columns): canonical, grouped by the keys' values, rows sorted. Zero-row pieces of a
    partitioned table hold no partition's content; an unpartitioned table is always ``{(): t}``."""
    groups: dict[tuple[str, ...], list[pa.Table]] = {}
    for table in tables:
        table = canonical(spec, table)
        if spec.partition_keys and table.num_rows == 0:
            continue
        for values, rows in _split_by_keys(table, spec.partition_keys).items():
            groups.setdefault(values, []).append(rows)
    if not spec.partition_keys and not groups:
        return {(): _empty(spec)}
    return {values: sort_rows(spec, pa.concat_tables(pieces))
            for values, pieces in sorted(groups.items())}


def _empty(spec: TableSpec) -> pa.Table:
    return pa.table({c.name: pa.array([], CANONICAL[c.kind]) for c in spec.columns})


def _parquet_files(folder: Path) -> list[Path]:
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        found += [Path(parent, f) for f in sorted(files)
                  if f.endswith(".parquet") and not f.startswith((".", "_"))]
    return found


def _hive(segment: str) -> tuple[str, str]:
    key, _, value = segment.partition("=")
    return key, unquote(value)


def _split_by_keys(table: pa.Table, keys: Sequence[str]) -> dict[tuple[str, ...], pa.Table]:
    if not keys:
        return {(): table}
    frame = table.select(list(keys)).to_pandas()
    return {tuple(values) if isinstance(values, tuple) else (values,): table.take(index)
            for values, index in frame.groupby(list(keys), sort=True).indices.items()}


def canonical(spec: TableSpec, table: pa.Table) -> pa.Table:
    """``table`` as logical content: contract columns at their canonical types in contract order,
    then (feature tables) the floating columns as float32, by name; everything else dropped.
    A feature column that float32 cannot hold exactly is a ``ValueError``."""
    columns = {}
    for column in spec.columns:
        if column.name not in table.column_names:
            raise ValueError(f"{spec.name}: column {column.name!r} missing")
        columns[column.name] = table[column.name].cast(CANONICAL[column.kind])
    if spec.feature_columns:
        for name in sorted(set(table.column_names) - set(spec.column_names)):
            values = table[name]
            if pa.types.is_floating(values.type):
                narrow = values.cast(pa.float32(), safe=False)
                if not _floats_equal(narrow.cast(values.type), values):
                    raise ValueError(f"{spec.name}: feature {name!r} is not float32")
                columns[name] = narrow
    return pa.table(columns)


def sort_rows(spec: TableSpec, table: pa.Table) -> pa.Table:
    """Rows in a canonical order: by the table's key columns, else by every scalar column."""
    keys = list(dict.fromkeys([*spec.partition_keys, *spec.key])) if spec.key else \
        [n for n, t in zip(table.column_names, table.schema.types) if not pa.types.is_list(t)]
    return table.sort_by([(k, "ascending") for k in keys]).combine_chunks()


# --- comparing ---------------------------------------------------------------------------------

def differences(a: str | Path | Logical, b: str | Path | Logical) -> list[str]:
    """How the logical content of two lakes differs (empty when it is the same): the tables, each
    partition's columns, types and rows, and each snapshot's program (state dict names and values,
    and outputs on fixed inputs); ``snapshots.artifact`` may differ, an optional table with no rows
    may be absent."""
    a, b = (x if isinstance(x, Logical) else read_lake(x) for x in (a, b))
    found = []
    for name in sorted(set(a.tables) | set(b.tables)):
        left, right = a.tables.get(name), b.tables.get(name)
        if TABLES[name].optional:
            left, right = left or {}, right or {}
            left, right = ({k: t for k, t in x.items() if t.num_rows} for x in (left, right))
        if left is None or right is None:
            found.append(f"{name}: present in only one lake")
            continue
        if name == "snapshots":
            left, right = ({k: t.drop_columns(["artifact"]) for k, t in x.items()}
                           for x in (left, right))
        if set(left) != set(right):
            found.append(f"{name}: partitions differ: {sorted(set(left) ^ set(right))[:5]}")
        for key in sorted(set(left) & set(right)):
            found += [f"{name} {key}: {d}" for d in _table_differences(left[key], right[key])]
    for sid in sorted(set(a.artifacts) | set(b.artifacts)):
        if sid not in a.artifacts or sid not in b.artifacts:
            found.append(f"snapshot {sid}: artifact in only one lake")
        elif a.artifacts[sid] != b.artifacts[sid]:
            found += [f"snapshot {sid}: {d}" for d in
                      program_differences(a.artifacts[sid], b.artifacts[sid])]
    return found


def logically_equal(a, b) -> bool:
    return not differences(a, b)


def _table_differences(left: pa.Table, right: pa.Table) -> list[str]:
    if left.schema != right.schema:
        return [f"schema {left.schema} != {right.schema}"]
    if left.num_rows != right.num_rows:
        return [f"{left.num_rows} rows != {right.num_rows} rows"]
    return [f"column {name!r} differs" for name in left.column_names
            if not _floats_equal(left[name], right[name])]


def _floats_equal(x, y) -> bool:
    """Equal values and nulls; NaN equals NaN (a logged NaN prediction is a value)."""
    if not pa.types.is_floating(x.type):
        return x.equals(y)
    if not pc.is_null(x).equals(pc.is_null(y)):
        return False
    xs, ys = (np.asarray(v.fill_null(0).to_numpy(zero_copy_only=False)) for v in (x, y))
    return bool(np.array_equal(xs, ys, equal_nan=True))


def program_differences(a: bytes, b: bytes) -> list[str]:
    """How two ``.pt2`` programs differ in what the contract fixes: the state dict (names, values)
    and the outputs (as ``[batch]``) on fixed inputs. Loaded with ``torch.export.load`` itself:
    these are our own files."""
    import torch

    left, right = (torch.export.load(io.BytesIO(x)) for x in (a, b))
    found = []
    ls, rs = ({**p.state_dict, **p.constants} for p in (left, right))
    if list(ls) != list(rs):
        found.append(f"state dict names {list(ls)} != {list(rs)}")
    found += [f"tensor {n!r} differs" for n in ls if n in rs and not _same_tensor(ls[n], rs[n])]
    n_features = _input_width(left)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, n_features, generator=generator)
    x[:3] = x[:3].abs()  # some rows where a log node stays finite
    with torch.no_grad():
        outs = [p.module()(x).reshape(-1) for p in (left, right)]
    if not _same_tensor(*outs):
        found.append("outputs differ")
    return found


def _same_tensor(x, y) -> bool:
    import torch

    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if not x.is_floating_point():
        return torch.equal(x, y)
    return torch.equal(x.isnan(), y.isnan()) and torch.equal(x[~x.isnan()], y[~y.isnan()])


def _input_width(program) -> int:
    (x,) = [n.meta["val"] for n in program.graph.nodes
            if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    return int(x.shape[1])


def stored_types(root: str | Path) -> set[tuple[str, str, str]]:
    """``(table, column, stored type)`` over every file of a lake, INT96 timestamps marked: what
    shows that two encodings really differ."""
    root = Path(root)
    found = set()
    for name in sorted(TABLES):
        if not (root / name).is_dir():
            continue
        for path in _parquet_files(root / name):
            meta = pq.ParquetFile(path)
            physical = {c.name: c.physical_type for c in meta.schema}
            for field in meta.schema_arrow:
                int96 = " INT96" if physical.get(field.name) == "INT96" else ""
                found.add((name, field.name, f"{field.type}{int96}"))
    return found


# --- writing -----------------------------------------------------------------------------------

def reencode(src: str | Path, dst: str | Path,
             encoding: int | LakeEncoding) -> LakeEncoding:
    """Rewrite the lake ``src`` into the new folder ``dst`` with ``encoding`` (or the encoding
    that seed draws); returns the encoding used."""
    logical = read_lake(src)
    if isinstance(encoding, int):
        encoding = seeded_encoding(logical, encoding)
    write_encoded(dst, logical, encoding)
    return encoding


def write_encoded(root: str | Path, logical: Logical, encoding: LakeEncoding) -> Path:
    """Write ``logical`` as a lake under ``root`` (a new or empty folder) with ``encoding``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tables = dict(logical.tables)
    if "snapshots" in tables:
        refs = _write_artifacts(root, logical, encoding)
        tables["snapshots"] = {k: _with_artifacts(t, refs) for k, t in tables["snapshots"].items()}
    for name, pieces in tables.items():
        spec = TABLES[name]
        if spec.optional and not any(t.num_rows for t in pieces.values()):
            if encoding.empty_optional == "absent":
                continue
            if encoding.empty_optional == "empty_folder":
                (root / name).mkdir()
                continue
        write_table(root / name, spec, pieces, encoding.tables[name])
    if encoding.extra_table:
        (root / _EXTRA_TABLE).mkdir()
        pq.write_table(pa.table({"event": ["re-encoded"], "model_id": ["not a model"]}),
                       root / _EXTRA_TABLE / "part-0.parquet")
        (root / "README.txt").write_text("a lake re-encoded by tests/reencode.py\n")
    return root


def write_table(folder: Path, spec: TableSpec, pieces: dict[tuple[str, ...], pa.Table],
                encoding: TableEncoding) -> None:
    """Write one table's partitions (canonical tables, partition keys included) under ``folder``
    as ``encoding`` lays them out; a table with no rows still gets a zero-row file."""
    layout = encoding.layout
    rng = random.Random(f"{spec.name}:{encoding.seed}")
    if not pieces:  # no partition: one zero-row file at the table's root
        pieces = {(): _empty(spec)}
    if layout.phantom_partition and spec.partition_keys and any(pieces):
        last = max(pieces)
        phantom = (*last[:-1], _next_day(last[-1]))
        pieces = {**pieces, phantom: pieces[last].slice(0, 0)}
    taken = {n for t in pieces.values() for n in t.column_names}
    for values, table in pieces.items():
        folder_of = _partition_folder(folder, spec, values, layout)
        n_files = min(rng.choice(range(1, layout.files_per_partition + 1)),
                      max(table.num_rows, 1))
        cuts = sorted(rng.sample(range(table.num_rows + 1), n_files - 1)) if n_files > 1 else []
        chunks = [table.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, table.num_rows])]
        if layout.empty_files:
            chunks.append(table.slice(0, 0))
        for k, chunk in enumerate(chunks):
            writer = rng.choice(encoding.writers)
            target = folder_of
            if layout.extra_key:
                target = target / f"{_free_name('writer', taken)}=w{rng.randrange(3)}"
            target.mkdir(parents=True, exist_ok=True)
            path = target / _file_name(layout.file_names, k, rng)
            physical = encode_file(spec, chunk, writer, rng, taken)
            pq.write_table(physical, path, **parquet_options(physical, writer))
            if layout.debris:
                (target / "_SUCCESS").write_bytes(b"")
                (target / f".{path.name}.crc").write_bytes(rng.randbytes(12))


def _partition_folder(folder: Path, spec: TableSpec, values: tuple[str, ...],
                      layout: Layout) -> Path:
    keys = list(zip(spec.partition_keys, values))
    if layout.key_order == "reversed":
        keys.reverse()
    hive = [f"{k}={hive_value(v, layout.quoting)}" for k, v in keys]
    parts = [*layout.subfolders, *hive] if layout.subfolders_on_top else \
        [*hive, *layout.subfolders]
    return folder.joinpath(*parts)


def hive_value(value: str, quoting: str) -> str:
    """A partition value in a folder name: raw (where it holds no ``%``), URL-quoted, or every
    byte percent-encoded; ``pyarrow.dataset`` URL-decodes all three to ``value``."""
    if quoting == "every_byte":
        return "".join(f"%{b:02X}" for b in value.encode())
    if quoting == "raw" and "%" not in value:
        return value
    return quote(value, safe="")


def _next_day(day: str) -> str:
    try:
        return (pd.Timestamp(day) + pd.Timedelta("1D")).strftime("%Y-%m-%d")
    except ValueError:
        return f"{day} (empty)"


def _free_name(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    return name


def _file_name(style: str, k: int, rng: random.Random) -> str:
    if style == "spark":
        return f"part-{k:05d}-{rng.randbytes(8).hex()}.c000.snappy.parquet"
    if style == "odd":
        return f"Teil {k} – größe 'copy'.parquet"
    return f"part-{k}.parquet"


def encode_file(spec: TableSpec, table: pa.Table, writer: Writer, rng: random.Random,
                taken: set[str] = frozenset()) -> pa.Table:
    """One file's physical table: ``table`` (canonical, partition keys included) with
    ``writer``'s types, columns, extra columns and row order (``taken``: names extra columns
    must not reuse)."""
    if not writer.keys_in_file:
        table = table.drop_columns([k for k in spec.partition_keys if k in table.column_names])
    if writer.shuffle_rows and table.num_rows > 1:
        table = table.take(np.random.default_rng(rng.getrandbits(64)).permutation(table.num_rows))
    fields, arrays = [], []
    for name, values in zip(table.column_names, table.columns):
        column = spec.columns_by_name.get(name)
        kind = column.kind if column is not None else Kind.FLOAT32
        values = _encode_column(kind, values, writer)
        not_null = writer.declare_not_null and values.null_count == 0
        fields.append(pa.field(name, values.type, nullable=not not_null))
        arrays.append(values)
    for name in writer.extra_columns:
        fields.append(pa.field(_free_name(name, taken), _EXTRA[name][0]))
        arrays.append(_EXTRA[name][1](table.num_rows, rng))
    order = list(range(len(fields)))
    if writer.column_order == "reversed":
        order.reverse()
    elif writer.column_order == "shuffled":
        rng.shuffle(order)
    return pa.Table.from_arrays([arrays[i] for i in order],
                                schema=pa.schema([fields[i] for i in order]))


_EXTRA: dict[str, tuple[pa.DataType, Callable[[int, random.Random], pa.Array]]] = {
    "writer_version": (pa.string(), lambda n, rng: pa.array(["spark 3.5 / reencode"] * n)),
    "__index_level_0__": (pa.int64(), lambda n, rng: pa.array(np.arange(n), pa.int64())),
    "shard": (pa.int16(), lambda n, rng: pa.array([rng.randrange(64) for _ in range(n)],
                                                  pa.int16())),
    "ingested_at": (pa.timestamp("ms"),
                    lambda n, rng: pa.array([1_800_000_000_000] * n, pa.timestamp("ms"))),
    "is_backfill": (pa.bool_(), lambda n, rng: pa.array([rng.random() < 0.5 for _ in range(n)])),
}


def _encode_column(kind: Kind, values: pa.ChunkedArray, writer: Writer) -> pa.ChunkedArray:
    if kind is Kind.TIMESTAMP:
        unit = exact_unit(values, writer.time_unit)
        return values.cast(pa.timestamp(unit, tz=writer.time_zone))
    if kind is Kind.STRING:
        return values.cast(string_type(values, writer.strings))
    if kind is Kind.STRING_LIST:
        inner = string_type(pc.list_flatten(values), writer.strings)
        return values.cast(pa.large_list(inner) if writer.lists == "large_list"
                           else pa.list_(inner))
    if kind in (Kind.INT32, Kind.INT64) and writer.integers != "contract":
        return values.cast(int_type(values, writer.integers))
    if kind is Kind.FLOAT32 and writer.features_float64:
        return values.cast(pa.float64())
    return values


def exact_unit(values, unit: str) -> str:
    """``unit``, or the next finer unit where it would round the instants (ns always fits)."""
    ns = values.cast(pa.timestamp("ns", tz=values.type.tz)).cast(pa.int64())
    ns = np.asarray(ns.fill_null(0).to_numpy(zero_copy_only=False))
    for candidate in _UNITS[_UNITS.index(unit):]:
        if not np.any(ns % _NS[candidate]):
            return candidate
    return "ns"


def string_type(values, choice: str) -> pa.DataType:
    """The string type ``choice`` names; int8 dictionary indices widen to int32 when more than
    127 distinct values need them."""
    if choice.startswith("dictionary"):
        narrow = choice == "dictionary8" and pc.count_distinct(values).as_py() <= 127
        return pa.dictionary(pa.int8() if narrow else pa.int32(), pa.string())
    return {"string": pa.string(), "large_string": pa.large_string(),
            "string_view": pa.string_view()}[choice]


def int_type(values, choice: str) -> pa.DataType:
    """The integer type ``choice`` names, widened (signed where a value is negative) until every
    value fits."""
    bounds = pc.min_max(values).as_py()
    low, high = (bounds["min"] or 0), (bounds["max"] or 0)
    signed = choice.startswith("int") or low < 0
    width = int(choice.removeprefix("u").removeprefix("int"))
    for bits in (8, 16, 32, 64):
        if bits < width:
            continue
        info = np.iinfo(f"{'' if signed else 'u'}int{bits}")
        if info.min <= low and high <= info.max:
            return _INTS[f"{'' if signed else 'u'}int{bits}"]
    raise ValueError(f"integers {low}..{high} fit no Arrow integer type")


def parquet_options(table: pa.Table, writer: Writer) -> dict:
    """``pq.write_table`` keywords for ``writer``. Formats before 2.6 store nanoseconds as
    microseconds, so a file whose instants need nanoseconds is written as 2.6."""
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    needs_ns = any(pa.types.is_timestamp(f.type) and f.type.unit == "ns"
                   and exact_unit(table[f.name], "us") == "ns" for f in table.schema)
    split = floats if writer.byte_stream_split else False
    dictionary = [f.name for f in table.schema if not (split and f.name in split)] \
        if writer.dictionary_pages else False
    return {"version": "2.6" if needs_ns else writer.version,
            "data_page_version": writer.data_page_version,
            "compression": writer.compression, "use_dictionary": dictionary,
            "use_byte_stream_split": split, "write_statistics": writer.statistics,
            "row_group_size": writer.row_group_size, "store_schema": writer.store_schema,
            "use_deprecated_int96_timestamps": writer.int96}


# --- snapshots ---------------------------------------------------------------------------------

def _write_artifacts(root: Path, logical: Logical, encoding: LakeEncoding) -> dict[str, str]:
    """Each snapshot's artifact written as ``encoding`` says; returns the new
    ``snapshots.artifact`` values by snapshot id."""
    models = {sid: model for table in logical.tables["snapshots"].values()
              for sid, model in zip(table["snapshot_id"].to_pylist(),
                                    table["model_id"].to_pylist())}
    refs = {}
    for sid, data in logical.artifacts.items():
        how = encoding.snapshots[sid]
        relative = Path(encoding.artifact_folder, models[sid], f"{sid}.pt2")
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if how.batch == "keep" else reexport(data, how.batch, how.output))
        refs[sid] = path.resolve().as_uri() if how.reference == "file_url" else relative.as_posix()
    return refs


def _with_artifacts(table: pa.Table, refs: dict[str, str]) -> pa.Table:
    values = pa.array([refs.get(s, a) for s, a in zip(table["snapshot_id"].to_pylist(),
                                                      table["artifact"].to_pylist())], pa.string())
    return table.set_column(table.schema.get_field_index("artifact"), "artifact", values)


@functools.lru_cache(maxsize=512)
def reexport(data: bytes, batch: str, output: str) -> bytes:
    """The ``.pt2`` program in ``data`` exported again with another batch declaration and output
    shape (``"batch"``: ``[batch]``, ``"batch_1"``: ``[batch, 1]``), same parameter names and
    numbers. The original is loaded with the project's safe loader, as any reader would.

    Snapshots of one model usually share a graph: it is traced once per graph, declaration and
    shape, and each snapshot is that trace with its own tensors (what tracing it again gives)."""
    import torch

    program = _original(data)
    tensors = {**program.state_dict, **program.constants}
    key = (program.graph_module.code, _input_width(program), batch, output,
           tuple((n, tuple(t.shape), t.dtype) for n, t in tensors.items()))
    if key not in _TRACED:
        _TRACED[key] = _export(program, batch, output)
    template = _TRACED[key]
    if set(template.state_dict) | set(template.constants) <= set(tensors):
        exported = torch.export.ExportedProgram(
            root=template.graph_module, graph=template.graph,
            graph_signature=template.graph_signature,
            state_dict={n: _like(v, tensors[n]) for n, v in template.state_dict.items()},
            range_constraints=template.range_constraints,
            module_call_graph=template.module_call_graph,
            example_inputs=template.example_inputs,
            constants={n: tensors[n] for n in template.constants}, verifiers=template.verifiers)
    else:  # the trace lifted constants under new names: export this snapshot itself
        exported = _export(program, batch, output)
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    return buffer.getvalue()


_TRACED: dict[tuple, Any] = {}


@functools.lru_cache(maxsize=64)
def _original(data: bytes):
    from hawkeye_dagster.snapshot_io import load_snapshot

    return load_snapshot(io.BytesIO(data), name="snapshot to re-encode")


def _like(template, tensor):
    import torch

    value = tensor.detach().clone()
    return torch.nn.Parameter(value, requires_grad=False) \
        if isinstance(template, torch.nn.Parameter) else value


def _export(program, batch: str, output: str):
    import torch

    module = program.module()
    _drop_input_guards(module)
    n_features = _input_width(program)
    with torch.no_grad():
        current = module(torch.zeros(EXAMPLE_BATCH, n_features)).dim()
    if current != (1 if output == "batch" else 2):
        _reshape_output(module, squeeze=current == 2)
    example = torch.zeros(EXAMPLE_BATCH, n_features)
    return torch.export.export(module, (example,), dynamic_shapes=_dynamic(batch, example))


def _drop_input_guards(module) -> None:
    """Remove the unlifted module's checks of the original declaration's batch range (its input
    pre-hook and ``_guards_fn`` call): a ``Dim.AUTO`` trace from a batch of 5 says ``batch >= 2``,
    which a wider declaration must not inherit. The graph's arithmetic is untouched."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del module._forward_pre_hooks[key]
    for node in list(module.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            module.graph.erase_node(node)
    module.recompile()


def _reshape_output(module, *, squeeze: bool) -> None:
    """Edit the unlifted graph so its single output is squeezed to ``[batch]`` or unsqueezed to
    ``[batch, 1]``: no wrapper module, so no parameter is renamed."""
    import torch

    graph = module.graph
    out = next(n for n in graph.nodes if n.op == "output")
    (value,) = out.args[0]
    with graph.inserting_before(out):
        op = torch.ops.aten.squeeze.dim if squeeze else torch.ops.aten.unsqueeze.default
        reshaped = graph.call_function(op, (value, -1))
    out.args = ((reshaped,),)
    module.recompile()


def _dynamic(batch: str, example):
    import torch

    Dim = torch.export.Dim
    if batch == "shapes":
        shapes = torch.export.ShapesCollection()
        shapes[example] = {0: Dim("batch")}
        return shapes
    dim = {"dim": lambda: Dim("batch"), "bounded": lambda: Dim("b", min=1, max=BOUNDED_MAX),
           "tight": lambda: Dim("b", min=1, max=TIGHT_MAX),
           "auto": lambda: Dim.AUTO, "dynamic": lambda: Dim.DYNAMIC}[batch]()
    return ({0: dim},)


def encoding_summary(encoding: LakeEncoding) -> str:
    """A short description of what an encoding chose, for failure messages and reports."""
    writers = [w for t in encoding.tables.values() for w in t.writers]
    seen = {name: sorted({repr(getattr(w, name)) for w in writers})
            for name in WRITER_OPTIONS}
    layouts = {name: sorted({repr(getattr(t.layout, name)) for t in encoding.tables.values()})
               for name in LAYOUT_OPTIONS}
    snaps = sorted({(s.batch, s.output, s.reference) for s in encoding.snapshots.values()})
    lake = {f.name: getattr(encoding, f.name) for f in dataclasses.fields(encoding)
            if f.name in LAKE_OPTIONS}
    return f"writers {seen}; layouts {layouts}; snapshots {snaps}; lake {lake}"
