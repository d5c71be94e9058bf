"""Writing simulated tables as Parquet with exactly the contract's columns and types."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hawkeye_dagster.contract import TABLES, Kind
from hawkeye_dagster.lake.conform import ARROW_TYPES as CONTRACT_ARROW_TYPES
from hawkeye_dagster.simulate.requests import START

#: the reader's types, with microsecond timestamps as a typical writer stores them
ARROW_TYPES = {**CONTRACT_ARROW_TYPES, Kind.TIMESTAMP: pa.timestamp("us", tz="UTC")}


def timestamps(seconds) -> np.ndarray:
    """Seconds since the timeline start as ``datetime64[us]`` (UTC)."""
    offsets = np.round(np.asarray(seconds, dtype=float) * 1e6).astype("int64")
    return START.astype("datetime64[us]") + offsets.astype("timedelta64[us]")


def write_table(root: Path, table: str, columns: dict, features: dict | None = None,
                partition: dict[str, str] | None = None) -> Path:
    """Write one Parquet file of a contract table under ``root``.

    ``columns`` holds the table's own columns (partition keys excluded when
    ``partition`` is given: they live only in the ``key=value/`` folders);
    ``features`` the float32 feature columns of ``serving_samples`` /
    ``training_data``, in the order given.
    """
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
    folder = root / table
    for key, value in partition.items():
        folder = folder / f"{key}={value}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), path)
    return path
