"""Training data checks per dataset partition (``dataset_id/partition``), backfillable.

Each partition is profiled (rows, label rate and imbalance, feature
statistics) and scored against its neighbouring partitions and against the
data its model served (train/serve skew of features and labels); results go
to storage under ``training/<dataset_id>/<partition>/``. A backfill over many
partitions is one run that reads each dataset once.
"""

import dagster as dg
import pandas as pd

from hawkeye_dagster.analysis.training_diagnosis import split_partition_key
from hawkeye_dagster.assets.partitions import training_partition_partitions
from hawkeye_dagster.assets.snapshots import served_inputs
from hawkeye_dagster.assets.telemetry import all_partitions, telemetry_key
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource

GROUP = "training"
OWNERS = ["team:ml-modeling"]
STORE = "training"
_NOT_FEATURES = {"dataset_id", "partition", "label"}


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"pandas", "parquet"},
    partitions_def=training_partition_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[all_partitions("training_data"), telemetry_key("training_runs"),
          telemetry_key("models"), all_partitions("serving_samples")],
    description="A training data partition's row count, label rate and imbalance and feature "
                "statistics, each against the neighbouring partitions (robust z) and against "
                "the served data of the dataset's model (train/serve skew).",
)
def training_partition_checks(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                              storage: HawkeyeStorage) -> dg.MaterializeResult:
    from hawkeye_dagster.analysis.training_diagnosis import (
        diagnose_partitions, neighbour_partitions)

    reader = telemetry.reader()
    wanted = pd.DataFrame([split_partition_key(k) for k in context.partition_keys],
                          columns=["dataset_id", "partition"])
    runs = reader.read("training_runs", columns=["dataset_id", "model_id"])
    models = reader.read("models", columns=["model_id", "task"]).drop_duplicates("model_id")
    tasks = dict(zip(models["model_id"], models["task"]))
    ranked = []
    for dataset_id, mine in wanted.groupby("dataset_id"):  # datasets, each read once
        partitions = sorted(mine["partition"])
        listing = reader.read("training_data", columns=["partition"],
                              equals={"dataset_id": dataset_id})["partition"].unique()
        train = reader.training_data(dataset_id, neighbour_partitions(listing, partitions))
        features = [c for c in train.columns if c not in _NOT_FEATURES]
        model = runs.loc[runs["dataset_id"] == dataset_id, "model_id"].head(1).tolist()
        serving = (served_inputs(reader, model[0], features,
                                 pd.Timestamp(partitions[-1], tz="UTC") + pd.Timedelta("1D"))
                   if model else pd.DataFrame(columns=[*features, "label"]))
        binary_labels = train["label"].dropna().isin([0.0, 1.0]).all()
        task = tasks[model[0]] if model and model[0] in tasks else \
            "binary_classification" if binary_labels else "regression"
        found = diagnose_partitions(train, partitions, serving, features, task, dataset_id)
        for partition in partitions:
            for name, frame in [("neighbour_checks", found.checks), ("serve_skew", found.skew)]:
                storage.write_parquet(frame[frame["partition"] == partition],
                                      STORE, dataset_id, partition, f"{name}.parquet")
        ranked.append(found.ranked.assign(model_id=model[0] if model else None))
    summary = pd.concat(ranked, ignore_index=True)
    return dg.MaterializeResult(metadata={
        "partitions": len(summary), "flagged": int(summary["flagged"].sum()),
        "flagged_partitions": dg.MetadataValue.md(
            summary[summary["flagged"]][["partition", "score", "reason"]].to_markdown(index=False)
            if summary["flagged"].any() else "_none_"),
    })


defs = dg.Definitions(assets=[training_partition_checks])
