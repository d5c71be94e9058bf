"""The contract's telemetry tables as external assets.

They are produced outside hawkeye-dagster (the ML platform writes them), so
they are ``AssetSpec``s: they give the lineage graph its roots and carry the
contract's column schema, so the UI shows what each table must hold.
"""

import dagster as dg

from hawkeye_dagster.contract import TABLES, TableSpec

from hawkeye_dagster.assets.partitions import model_day_partitions, training_partition_partitions

TELEMETRY_GROUP = "telemetry"
OWNERS = ["team:ml-platform"]

_PARTITIONS = {
    "serving_samples": model_day_partitions,
    "training_data": training_partition_partitions,
}


def telemetry_key(table: str) -> dg.AssetKey:
    """The asset key of a contract table."""
    if table not in TABLES:
        raise KeyError(f"not a contract table: {table}")
    return dg.AssetKey(["telemetry", table])


def all_partitions(table: str) -> dg.AssetDep:
    """A dependency on every partition of a contract table."""
    return dg.AssetDep(telemetry_key(table), partition_mapping=dg.AllPartitionMapping())


def _column_schema(spec: TableSpec) -> dg.TableSchema:
    columns = [
        dg.TableColumn(
            c.name,
            c.kind.value,
            description=c.description or None,
            constraints=dg.TableColumnConstraints(nullable=c.nullable, unique=False),
        )
        for c in spec.columns
    ]
    if spec.feature_columns:
        columns.append(
            dg.TableColumn("<feature>", "float32", description="one column per model input feature")
        )
    return dg.TableSchema(columns=columns)


def _spec(spec: TableSpec) -> dg.AssetSpec:
    description = spec.description + (" Optional." if spec.optional else "")
    return dg.AssetSpec(
        telemetry_key(spec.name),
        description=description,
        group_name=TELEMETRY_GROUP,
        owners=OWNERS,
        kinds={"parquet"},
        partitions_def=_PARTITIONS.get(spec.name),
        metadata={
            "dagster/column_schema": _column_schema(spec),
            "contract_table": spec.name,
            "partition_keys": ", ".join(spec.partition_keys) or "none",
        },
    )


telemetry_specs = [_spec(spec) for spec in TABLES.values()]

defs = dg.Definitions(assets=telemetry_specs)
