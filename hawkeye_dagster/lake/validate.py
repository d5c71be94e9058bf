"""Checking a telemetry lake against the contract without analysing it.

``validate_lake`` reports every problem it finds (it does not stop at the
first), each naming the table, the file (or SQL table) and the column. Stored
pieces are checked one at a time from their metadata (Parquet footers), and
data checks read only the columns they need.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hawkeye_dagster.contract import TABLES, Kind, TableSpec
from hawkeye_dagster.errors import ContractError, LineageCycleError
from hawkeye_dagster.lake.conform import type_problem
from hawkeye_dagster.lake.parquet import DATE_KEY
from hawkeye_dagster.lake.reader import TablePart, TelemetryReader
from hawkeye_dagster.lineage_check import checked_edges

_EXAMPLES = 3
#: a sum of traffic fractions may exceed 1 by this much (rounding)
TRAFFIC_TOLERANCE = 1e-9
#: (table, column) -> (table, column) it refers to
REFERENCES = (
    ("model_features", "model_id", "models", "model_id"),
    ("experiments", "snapshot_id", "snapshots", "snapshot_id"),
    ("snapshots", "training_run_id", "training_runs", "training_run_id"),
    ("training_metrics", "training_run_id", "training_runs", "training_run_id"),
    ("features", "lineage_node_id", "lineage_nodes", "node_id"),
    ("lineage_edges", "upstream_id", "lineage_nodes", "node_id"),
    ("lineage_edges", "downstream_id", "lineage_nodes", "node_id"),
    ("lineage_node_stats", "node_id", "lineage_nodes", "node_id"),
    ("lineage_changes", "node_id", "lineage_nodes", "node_id"),
    ("lineage_nodes", "pipeline_id", "pipelines", "pipeline_id"),
)
#: (table, column) -> closed range of its values
RANGES = {("experiments", "traffic_fraction"): (0.0, 1.0)}


@dataclass(frozen=True)
class Problem:
    """One way a lake breaks the contract, and where."""

    table: str
    file: str | None
    column: str | None
    reason: str

    def __str__(self) -> str:
        return ContractError(self.reason, table=self.table, file=self.file,
                             column=self.column).one_line()


def validate_lake(reader: TelemetryReader, *, check_artifacts: bool = True) -> list[Problem]:
    """Every contract problem of the lake behind ``reader`` (empty when it conforms).

    ``check_artifacts`` also loads each snapshot artifact through
    :mod:`hawkeye_dagster.snapshot_io` (safely) and checks its input width.
    """
    present = reader.tables()
    problems = [Problem(name, reader.location, None, "required table is missing")
                for name in reader.missing_tables()]
    parts = {name: reader.parts(name) for name in present}
    for name in sorted(present):
        for part in parts[name]:
            problems += _check_part(reader, TABLES[name], part)
    check = _Checks(reader, parts)
    for run in (check.keys, check.references, check.traffic, check.lineage_cycles,
                check.model_features):
        problems += run()
    if check_artifacts:
        problems += check.artifacts()
    return problems


def _check_part(reader: TelemetryReader, spec: TableSpec, part: TablePart) -> list[Problem]:
    """Columns, types and values of one stored piece."""
    def problem(column: str | None, reason: str) -> Problem:
        return Problem(spec.name, part.location, column, reason)

    if part.problem is not None:
        return [problem(None, part.problem)]
    stored = {f.name: f.type for f in part.schema}
    found = [problem(c, "required column is missing") for c in spec.column_names
             if c not in stored]
    mistyped = {c: type_problem(spec, c, t) for c, t in stored.items()}
    found += [problem(c, reason) for c, reason in mistyped.items() if reason]
    wanted = [c.name for c in spec.columns if c.name in stored and not mistyped[c.name]
              and (not c.nullable or c.choices or c.kind in (Kind.FLOAT64, Kind.FLOAT32))]
    if not wanted:
        return found
    try:
        data = reader.read_part(part, wanted)
    except ContractError as exc:
        return [*found, problem(exc.column, exc.reason)]
    for name in wanted:
        found += [problem(name, reason) for reason in _value_problems(spec, name, data[name])]
    if DATE_KEY in spec.partition_keys and {DATE_KEY, spec.time_column} <= set(wanted):
        days = pc.strftime(data[spec.time_column], format="%Y-%m-%d")
        wrong = pc.sum(pc.not_equal(days, data[DATE_KEY])).as_py() or 0
        if wrong:
            found.append(problem(spec.time_column,
                                 f"{wrong} rows whose UTC date is not their {DATE_KEY}= partition"))
    return found


def _value_problems(spec: TableSpec, name: str, values: pa.ChunkedArray) -> Iterator[str]:
    column = spec.column(name)
    floating = column.kind in (Kind.FLOAT64, Kind.FLOAT32)
    # SQLite stores NaN as NULL: where NaN is legal, a null is taken for one
    if not column.nullable and values.null_count and not (floating and column.allow_nonfinite):
        yield f"{values.null_count} null values where the contract allows none"
    if floating and not column.allow_nonfinite:  # in a nullable column NaN means missing
        bad = pc.sum(pc.is_inf(values) if column.nullable else
                     pc.invert(pc.is_finite(values))).as_py() or 0
        if bad:
            yield (f"{bad} {'infinite' if column.nullable else 'NaN or infinite'} values "
                   "where the contract allows none")
    if column.choices:
        outside = pc.unique(values.filter(pc.invert(pc.is_in(values, pa.array(column.choices)))))
        outside = outside.drop_null()
        if len(outside):
            yield (f"values outside {list(column.choices)}: "
                   f"{', '.join(map(repr, outside[:_EXAMPLES].to_pylist()))}")
    if (spec.name, name) in RANGES:
        low, high = RANGES[spec.name, name]
        bad = pc.sum(pc.or_(pc.less(values, low), pc.greater(values, high))).as_py() or 0
        if bad:
            yield f"{bad} values outside [{low}, {high}]"


class _Checks:
    """Checks across pieces and tables; each returns its problems."""

    def __init__(self, reader: TelemetryReader, parts: dict[str, list[TablePart]]):
        self.reader, self.parts = reader, parts
        self._cache: dict[tuple[str, tuple[str, ...]], pd.DataFrame | None] = {}

    def where(self, table: str) -> str:
        """The location naming a problem that spans a table's pieces."""
        pieces = {p.location for p in self.parts.get(table, [])}
        return pieces.pop() if len(pieces) == 1 else f"{self.reader.location}/{table}"

    def frame(self, table: str, columns: tuple[str, ...]) -> pd.DataFrame | None:
        """Some columns of a table; ``None`` when absent or unreadable (reported per piece)."""
        key = (table, columns)
        if key not in self._cache:
            try:
                usable = table in self.parts and all(
                    any(c in (p.schema.names if p.schema else ()) for p in self.parts[table])
                    for c in columns)
                self._cache[key] = self.reader.read(table, columns=list(columns)) \
                    if usable else None
            except ContractError:
                self._cache[key] = None
        return self._cache[key]

    def keys(self) -> list[Problem]:
        found = []
        for spec in TABLES.values():
            data = self.frame(spec.name, spec.key) if spec.key else None
            if data is None:
                continue
            repeated = data[data.duplicated(keep=False)].drop_duplicates()
            if len(repeated):
                examples = ", ".join(repr(tuple(r)) for r in repeated.head(_EXAMPLES).itertuples(
                    index=False))
                found.append(Problem(spec.name, self.where(spec.name), ", ".join(spec.key),
                                     f"{len(repeated)} duplicate ids, e.g. {examples}"))
        return found

    def references(self) -> list[Problem]:
        found = []
        for table, column, target, target_column in REFERENCES:
            values, known = self.frame(table, (column,)), self.frame(target, (target_column,))
            if values is None or known is None:  # an absent table is reported on its own
                continue
            unknown = pd.unique(values[column][~values[column].isin(known[target_column])
                                               & values[column].notna()])
            if len(unknown):
                found.append(Problem(table, self.where(table), column,
                                     f"{len(unknown)} ids not in {target}.{target_column}, e.g. "
                                     + ", ".join(map(repr, unknown[:_EXAMPLES]))))
        return found

    def traffic(self) -> list[Problem]:
        """At any time the fractions of one (model, segment) sum to at most 1."""
        columns = ("ts", "experiment_id", "model_id", "segment", "traffic_fraction")
        data = self.frame("experiments", columns)
        if data is None or data.empty:
            return []
        timeline = data.pivot_table(index=["model_id", "segment", "ts"], columns="experiment_id",
                                    values="traffic_fraction", aggfunc="last")
        total = timeline.groupby(level=["model_id", "segment"]).ffill().fillna(0).sum(axis=1)
        over = total[total > 1 + TRAFFIC_TOLERANCE]
        if over.empty:
            return []
        (model, segment, ts), value = next(iter(over.items()))
        return [Problem("experiments", self.where("experiments"), "traffic_fraction",
                        f"fractions sum above 1 at {len(over)} times, e.g. {value:g} for model "
                        f"{model!r} segment {segment!r} from {ts.isoformat()}")]

    def lineage_cycles(self) -> list[Problem]:
        nodes = self.frame("lineage_nodes", ("node_id", "kind", "pipeline_id"))
        edges = self.frame("lineage_edges", ("upstream_id", "downstream_id"))
        if nodes is None or edges is None:
            return []
        known = edges["upstream_id"].isin(nodes["node_id"]) & edges["downstream_id"].isin(
            nodes["node_id"])  # unknown ids are reported by references()
        try:
            checked_edges(nodes, edges[known])
        except LineageCycleError as exc:
            return [Problem("lineage_edges", self.where("lineage_edges"), exc.column, exc.reason)]
        return []

    def model_features(self) -> list[Problem]:
        """Positions run 0..F-1, and every model feature is a column of the model's own data."""
        features = self.frame("model_features", ("model_id", "position", "feature_name"))
        if features is None:
            return []
        found = []
        shape = features.groupby("model_id")["position"].agg(["min", "max", "count"])
        gaps = shape[(shape["min"] != 0) | (shape["max"] != shape["count"] - 1)]
        if len(gaps):
            found.append(Problem("model_features", self.where("model_features"), "position",
                                 f"positions are not 0..F-1 for models "
                                 f"{', '.join(map(repr, gaps.index[:_EXAMPLES]))}"))
        runs = self.frame("training_runs", ("model_id", "dataset_id"))
        owners = {"serving_samples": features.assign(owner=features["model_id"])}
        if runs is not None:
            owners["training_data"] = features.merge(runs.drop_duplicates(), on="model_id").rename(
                columns={"dataset_id": "owner"})
        for table, needed in owners.items():
            stored = self._columns_by_owner(table)
            merged = needed.merge(stored.assign(stored=True), how="left",
                                  on=["owner", "feature_name"])
            lacking = merged[merged["stored"].isna() & merged["owner"].isin(stored["owner"])]
            for owner, names in lacking.groupby("owner")["feature_name"]:
                locations = stored.loc[stored["owner"] == owner, "location"].unique()
                found.append(Problem(table, _common_folder(locations), names.iloc[0],
                                     f"features of {owner!r} missing from its columns: "
                                     + ", ".join(map(repr, names[:_EXAMPLES]))))
        return found

    def _columns_by_owner(self, table: str) -> pd.DataFrame:
        """``(owner, feature_name, location)`` for each column stored for each model (dataset)."""
        key = TABLES[table].partition_keys[0]
        rows = []
        for part in self.parts.get(table, []):
            if part.schema is None:
                continue
            owner = part.partition.get(key)
            try:
                owners = [owner] if owner is not None else pc.unique(
                    self.reader.read_part(part, [key])[key]).to_pylist()
            except ContractError:
                continue
            rows += [(o, c, part.location) for o in owners for c in part.schema.names]
        return pd.DataFrame(rows, columns=["owner", "feature_name", "location"])

    def artifacts(self) -> list[Problem]:
        # torch (seconds to import) only where artifacts are opened, not for --skip-artifacts
        from hawkeye_dagster.snapshot_io import load_artifact, snapshot_signature

        snapshots = self.frame("snapshots", ("model_id", "snapshot_id", "artifact"))
        features = self.frame("model_features", ("model_id", "feature_name"))
        if snapshots is None:
            return []
        widths = features.groupby("model_id").size() if features is not None else pd.Series()
        found = []
        for model_id, snapshot_id, artifact in snapshots.itertuples(index=False):
            try:
                name = self.reader.resolve_artifact(artifact)
                width = snapshot_signature(load_artifact(self.reader, artifact,
                                                         snapshot_id=snapshot_id),
                                           name=name).n_features
            except ContractError as exc:
                found.append(Problem("snapshots", exc.file, "artifact", exc.reason))
                continue
            if model_id in widths.index and width != widths[model_id]:
                found.append(Problem("snapshots", name, "artifact",
                                     f"program takes {width} features, model {model_id!r} has "
                                     f"{widths[model_id]} in model_features"))
        return found


def _common_folder(locations) -> str:
    """The one location, or the deepest folder holding them all."""
    if len(locations) == 1:
        return locations[0]
    prefix = os.path.commonprefix(list(locations))
    return prefix[: prefix.rfind("/")] if "/" in prefix else prefix
