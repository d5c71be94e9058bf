"""Writing simulated tables as Parquet with exactly the contract's columns and types."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from hawkeye_dagster.contract import TABLES, Kind
from hawkeye_dagster.lake.conform import ARROW_TYPES as CONTRACT_ARROW_TYPES
from hawkeye_dagster.simulate.encoding import EncodingKind, LakeEncoding
from hawkeye_dagster.simulate.requests import START

#: the reader's types, with microsecond timestamps as a typical writer stores them
ARROW_TYPES = {**CONTRACT_ARROW_TYPES, Kind.TIMESTAMP: pa.timestamp("us", tz="UTC")}


def timestamps(seconds) -> np.ndarray:
    """Seconds since the timeline start as ``datetime64[us]`` (UTC)."""
    offsets = np.round(np.asarray(seconds, dtype=float) * 1e6).astype("int64")
    return START.astype("datetime64[us]") + offsets.astype("timedelta64[us]")


def write_table(root: Path, table: str, columns: dict, features: dict | None = None,
                partition: dict[str, str] | None = None,
                encoding: LakeEncoding | None = None) -> Path:
    """Write one Parquet file of a contract table under ``root``.

    ``columns`` holds the table's own columns (partition keys excluded when
    ``partition`` is given: they live only in the ``key=value/`` folders);
    ``features`` the float32 feature columns of ``serving_samples`` /
    ``training_data``, in the order given. ``encoding`` stores the file(s)
    (default: canonically, one ``part-0.parquet``); returns the first file.
    """
    encoding = encoding or LakeEncoding(EncodingKind.CANONICAL)
    spec = TABLES[table]
    partition = partition or {}
    if list(partition) != list(spec.partition_keys[:len(partition)]):
        raise ValueError(f"{table}: partition keys must be {spec.partition_keys}")
    fields, arrays = [], []
    for column in spec.columns:
        if column.name in partition:
            continue
        kind = ARROW_TYPES[column.kind]
        values = columns[column.name]
        if column.kind is Kind.TIMESTAMP:
            values = timestamps(values)
        fields.append(pa.field(column.name, kind, nullable=column.nullable))
        # a NaN in a nullable float column is a missing value (a label not yet arrived)
        arrays.append(pa.array(values, type=kind, from_pandas=column.nullable))
    for name, values in (features or {}).items():
        fields.append(pa.field(name, pa.float32()))
        arrays.append(pa.array(np.asarray(values, dtype=np.float32), type=pa.float32()))
    return encoding.write(pa.Table.from_arrays(arrays, schema=pa.schema(fields)),
                          encoding.folder(root / table, partition), partition)
