"""How the simulator stores its tables: the contract's encodings, canonical or varied.

A real lake is written by many tools over time, so one table's files differ in
how they encode the same logical data. ``varied`` draws, for every file the
simulator writes, one of the encodings the contract allows:

- timestamps in any unit that holds the values exactly (s, ms, us, ns), naive
  (meaning UTC) or tz-aware in UTC or another zone;
- strings as ``string``, ``large_string`` or dictionary-encoded;
- integer columns at a width that holds their values, lists as ``list`` or ``large_list``;
- columns in any order, partition keys also stored inside the file or not,
  Hive values URL-encoded, rows split over one to three files (a zero-row file
  among them now and then), some files one folder deeper;
- each model's batch dimension declared as ``Dim("batch")`` with or without
  bounds, ``Dim.AUTO`` or ``Dim.DYNAMIC`` when its first snapshot is traced.

The draws come from their own random stream of the seed, so the simulated
world, its incidents and every logical value are the same under either
encoding: a triage must give the same report on both.
"""

from __future__ import annotations

import enum
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

#: stream id that separates the encoding draws from the world's random stream
_STREAM = 0x5EED_E0C
_UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_ZONES = (None, "UTC", "Asia/Kolkata", "America/New_York")
_INTS = (pa.int16(), pa.int32(), pa.int64())


class EncodingKind(str, enum.Enum):
    CANONICAL = "canonical"
    VARIED = "varied"


class LakeEncoding:
    """Writes each Parquet file of a simulated lake, canonically or with drawn encodings."""

    def __init__(self, kind: EncodingKind | str = EncodingKind.VARIED, seed: int = 0):
        self.kind = EncodingKind(kind)
        self._rng = np.random.default_rng([seed, _STREAM])

    @property
    def varied(self) -> bool:
        return self.kind is EncodingKind.VARIED

    def batch_dim(self):
        """How a newly traced model declares its dynamic batch dimension."""
        dim = torch.export.Dim
        if not self.varied:
            return dim("batch", min=1)
        choices = (lambda: dim("batch", min=1), lambda: dim("batch"),
                   lambda: dim("batch", min=1, max=512), lambda: dim.AUTO,
                   lambda: dim.DYNAMIC)
        return choices[self._rng.integers(len(choices))]()

    def folder(self, table_folder: Path, partition: dict[str, str]) -> Path:
        """The Hive folder of a partition: ``key=value`` steps, values URL-encoded."""
        folder = table_folder
        for key, value in partition.items():
            folder = folder / f"{key}={quote(str(value), safe='') if self.varied else value}"
        return folder

    def write(self, table: pa.Table, folder: Path, partition: dict[str, str]) -> Path:
        """Write ``table`` (the canonical encoding, partition keys excluded) under ``folder``;
        returns the first file written."""
        folder.mkdir(parents=True, exist_ok=True)
        if not self.varied:
            path = folder / "part-0.parquet"
            pq.write_table(table, path)
            return path
        rng = self._rng
        if partition and rng.random() < 0.5:  # the keys stored in the file as well
            for key, value in partition.items():
                table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
        bounds = np.sort(rng.integers(0, table.num_rows + 1, size=int(rng.integers(0, 3))))
        pieces = np.split(np.arange(table.num_rows), bounds)
        if rng.random() < 0.1:
            pieces.append(np.arange(0))
        if rng.random() < 0.3:
            folder = folder / f"writer {int(rng.integers(10))}"
            folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, rows in enumerate(pieces):
            path = folder / f"part-{i}.parquet"
            pq.write_table(self._encode(table.take(rows)), path)
            paths.append(path)
        return paths[0]

    def _encode(self, table: pa.Table) -> pa.Table:
        """One file's columns re-encoded by a fresh draw, in a drawn order."""
        rng = self._rng
        zone = _ZONES[rng.integers(len(_ZONES))]
        strings = rng.integers(3)
        columns = []
        for column in table.columns:
            kind = column.type
            if pa.types.is_timestamp(kind):
                column = column.cast(pa.timestamp(_exact_unit(column, rng), tz=zone))
            elif pa.types.is_string(kind):
                column = (column, column.cast(pa.large_string()),
                          column.dictionary_encode())[strings]
            elif pa.types.is_integer(kind):
                column = column.cast(_fitting_int(column, rng))
            elif pa.types.is_list(kind) and rng.random() < 0.5:
                column = column.cast(pa.large_list(kind.value_type))
            columns.append(column)
        order = rng.permutation(table.num_columns)
        return pa.table([columns[i] for i in order], names=[table.column_names[i] for i in order])


def _exact_unit(column: pa.ChunkedArray, rng: np.random.Generator) -> str:
    """A drawn unit among those that hold every value of a timestamp column exactly."""
    ns = column.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    exact = [u for u, per in _UNITS.items() if not np.any(ns % per)]
    return exact[rng.integers(len(exact))]


def _fitting_int(column: pa.ChunkedArray, rng: np.random.Generator) -> pa.DataType:
    """A drawn integer width that holds every value of the column."""
    values = column.to_numpy(zero_copy_only=False)
    low, high = (int(values.min()), int(values.max())) if len(values) else (0, 0)
    fits = [t for t in _INTS if np.iinfo(t.to_pandas_dtype()).min <= low
            and high <= np.iinfo(t.to_pandas_dtype()).max]
    return fits[rng.integers(len(fits))]
