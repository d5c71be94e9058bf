"""The telemetry contract (``hawkeye-telemetry/1``) as data.

Every reader, writer, validator and Dagster asset takes table names, column
names and types from here, so the contract is written down exactly once.
See ``../shared/CONTRACT.md`` for the prose version.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

CONTRACT_VERSION = "hawkeye-telemetry/1"


class Kind(enum.Enum):
    """Logical column types of the contract."""

    TIMESTAMP = "timestamp"
    STRING = "string"
    FLOAT64 = "float64"
    FLOAT32 = "float32"
    INT32 = "int32"
    INT64 = "int64"
    STRING_LIST = "list<string>"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False
    #: NaN/inf are legal values (a logged NaN prediction is the record)
    allow_nonfinite: bool = False
    #: the allowed values, where the contract enumerates them
    choices: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    description: str
    #: Hive partition keys (columns of the table) in directory order
    partition_keys: tuple[str, ...] = ()
    #: a table marked optional may be absent from a lake
    optional: bool = False
    #: columns whose combination identifies a row (duplicates are bad input)
    key: tuple[str, ...] = ()
    #: the table carries one float32 column per model input feature besides ``columns``
    feature_columns: bool = False
    #: the timestamp column that range filters apply to
    time_column: str | None = None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def columns_by_name(self) -> dict[str, Column]:
        """The contract columns by name."""
        return {c.name: c for c in self.columns}

    def column(self, name: str) -> Column:
        return self.columns_by_name[name]

    @cached_property
    def row_order(self) -> tuple[str, ...]:
        """The columns that give the table's rows their canonical order: the time column,
        then the key (every scalar contract column where the table has no key).

        The contract gives stored rows no order. Reading them in this one makes every row
        sample, bootstrap and tie-break the same whatever order a writer chose.
        """
        rest = self.key or tuple(c.name for c in self.columns if c.kind is not Kind.STRING_LIST)
        head = (self.time_column,) if self.time_column else ()
        return tuple(dict.fromkeys(head + rest))


_c = Column


T, S, F64, F32, I32, I64, L = (
    Kind.TIMESTAMP,
    Kind.STRING,
    Kind.FLOAT64,
    Kind.FLOAT32,
    Kind.INT32,
    Kind.INT64,
    Kind.STRING_LIST,
)

TASKS = ("binary_classification", "regression")
NODE_KINDS = ("source", "table", "transform", "feature")
CHANGE_TYPES = ("code", "config", "schema")
ORCHESTRATORS = ("dagster", "airflow", "external")
SEVERITIES = ("info", "warning", "critical")

_TABLES = (
    TableSpec(
        "topline_metrics",
        (_c("ts", T), _c("product", S), _c("segment", S), _c("metric", S), _c("value", F64)),
        "Product top-line metrics per time bucket; higher is better unless the "
        "metric name ends in `_lower_is_better`.",
        key=("ts", "product", "segment", "metric"),
        time_column="ts",
    ),
    TableSpec(
        "models",
        (_c("model_id", S), _c("product", S), _c("segment", S), _c("task", S, choices=TASKS)),
        "Serving models and the product segments whose predictions they power.",
        key=("model_id", "product", "segment"),
    ),
    TableSpec(
        "model_features",
        (_c("model_id", S), _c("position", I32), _c("feature_name", S)),
        "Each model's input features in input order.",
        key=("model_id", "position"),
    ),
    TableSpec(
        "experiments",
        (
            _c("ts", T),
            _c("experiment_id", S),
            _c("model_id", S),
            _c("snapshot_id", S),
            _c("segment", S),
            _c("traffic_fraction", F64),
        ),
        "Snapshot rollout timeline: the traffic fraction each experiment arm serves from `ts` on.",
        time_column="ts",
    ),
    TableSpec(
        "snapshots",
        (
            _c("model_id", S),
            _c("snapshot_id", S),
            _c("published_at", T),
            _c("training_run_id", S, nullable=True),
            _c("artifact", S),
        ),
        "Published model snapshots and their `.pt2` artifacts.",
        key=("snapshot_id",),
        time_column="published_at",
    ),
    TableSpec(
        "serving_samples",
        (
            _c("model_id", S),
            _c("date", S),
            _c("ts", T),
            _c("snapshot_id", S),
            _c("request_id", S),
            _c("segment", S),
            _c("prediction", F64, allow_nonfinite=True),
            _c("label", F64, nullable=True),
        ),
        "Sampled model inputs (one float32 column per feature) and the predictions returned.",
        partition_keys=("model_id", "date"),
        key=("model_id", "request_id"),
        feature_columns=True,
        time_column="ts",
    ),
    TableSpec(
        "features",
        (_c("feature_name", S), _c("lineage_node_id", S)),
        "The lineage node whose output is each feature.",
        key=("feature_name",),
    ),
    TableSpec(
        "lineage_nodes",
        (
            _c("node_id", S),
            _c("kind", S, choices=NODE_KINDS),
            _c("pipeline_id", S, nullable=True),
        ),
        "Nodes of the upstream data lineage graph.",
        key=("node_id",),
    ),
    TableSpec(
        "lineage_edges",
        (_c("upstream_id", S), _c("downstream_id", S)),
        "Data flows from upstream to downstream (acyclic).",
        key=("upstream_id", "downstream_id"),
    ),
    TableSpec(
        "lineage_node_stats",
        (_c("ts", T), _c("node_id", S), _c("stat", S), _c("value", F64, nullable=True)),
        "Time series of statistics of each node's own data.",
        key=("ts", "node_id", "stat"),
        time_column="ts",
    ),
    TableSpec(
        "lineage_changes",
        (
            _c("ts", T),
            _c("node_id", S),
            _c("change_type", S, choices=CHANGE_TYPES),
            _c("version", S),
            _c("description", S),
        ),
        "Code, config and schema changes deployed at lineage nodes.",
        time_column="ts",
    ),
    TableSpec(
        "pipelines",
        (_c("pipeline_id", S), _c("orchestrator", S, choices=ORCHESTRATORS), _c("target", S)),
        "Pipelines that produce lineage nodes.",
        key=("pipeline_id",),
    ),
    TableSpec(
        "feature_alerts",
        (
            _c("ts", T),
            _c("feature_name", S),
            _c("alert_type", S),
            _c("severity", S, choices=SEVERITIES),
            _c("detail", S),
        ),
        "Feature health alerts raised by other monitoring.",
        optional=True,
        time_column="ts",
    ),
    TableSpec(
        "training_runs",
        (
            _c("training_run_id", S),
            _c("model_id", S),
            _c("dataset_id", S),
            _c("partitions", L),
            _c("started_at", T),
            _c("finished_at", T),
        ),
        "Which training data partitions produced a snapshot.",
        key=("training_run_id",),
    ),
    TableSpec(
        "training_metrics",
        (_c("training_run_id", S), _c("step", I64), _c("loss", F64, allow_nonfinite=True),
         _c("grad_norm", F64, allow_nonfinite=True)),
        "Training-time loss and gradient-norm curves.",
        key=("training_run_id", "step"),
    ),
    TableSpec(
        "training_data",
        (_c("dataset_id", S), _c("partition", S), _c("label", F64)),
        "Training examples (one float32 column per feature) at partition granularity.",
        partition_keys=("dataset_id", "partition"),
        feature_columns=True,
    ),
)

TABLES: dict[str, TableSpec] = {t.name: t for t in _TABLES}

LOWER_IS_BETTER_SUFFIX = "_lower_is_better"


def higher_is_better(metric: str) -> bool:
    """Top-line metrics are higher-is-better unless named ``*_lower_is_better``."""
    return not metric.endswith(LOWER_IS_BETTER_SUFFIX)
