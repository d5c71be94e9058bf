"""Snapshot diagnosis as assets: one ``snapshot`` partition per published snapshot.

``snapshot_baseline`` finds the snapshot's model, its latest operationally
stable predecessors and whether its artifact is a safe ``torch.export``
program (a blocking check: a refused artifact stops the diagnosis there).
The analyses then run side by side: weight diff, activations, importance
change, training. ``snapshot_report`` weighs them into a verdict with plots
and carries the blocking gate checks a deployment can hold promotion on.
``stable_snapshots`` is the history of stable snapshots of every model.

Outputs go to storage under ``snapshots/<snapshot_id>/``. Heavy imports
(torch, scipy, matplotlib) happen inside the assets only.
"""

from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.model_isolation import QUALITY_COLUMNS
from hawkeye_dagster.analysis.snapshot_report import GATE_CHECKS, RECENT_INPUTS
from hawkeye_dagster.assets import automation
from hawkeye_dagster.assets.partitions import snapshot_partitions
from hawkeye_dagster.assets.metadata import md_table, saved_png_md
from hawkeye_dagster.assets.telemetry import all_partitions, telemetry_key
from hawkeye_dagster.errors import BadSnapshotError, ContractError, UnknownIdError
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.run_launcher import CRASH_RETRY_TAGS
from hawkeye_dagster.time_range import TimeRange

GROUP = "snapshots"
OWNERS = ["team:ml-modeling"]
STORE = "snapshots"
#: served rows a snapshot is run on
ACTIVATION_ROWS = 10_000
#: served rows feature importance is compared on (ablation costs a pass per feature)
IMPORTANCE_ROWS = 2_000


# --- reading ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot's row of ``snapshots`` and its model's inputs."""

    snapshot_id: str
    model_id: str
    published_at: pd.Timestamp
    training_run_id: str | None
    artifact: str
    task: str
    features: list[str]


def snapshot_info(reader: TelemetryReader, snapshot_id: str) -> SnapshotInfo:
    rows = reader.read("snapshots", equals={"snapshot_id": snapshot_id})
    if rows.empty:
        raise UnknownIdError(f"snapshot {snapshot_id!r} is not in the snapshots table")
    row = rows.iloc[0]
    model = row["model_id"]
    models = reader.read("models", columns=["model_id", "task"], equals={"model_id": model})
    if models.empty:
        raise UnknownIdError(f"model {model!r} of snapshot {snapshot_id!r} is not in models")
    features = reader.read("model_features", equals={"model_id": model}).sort_values("position")
    return SnapshotInfo(snapshot_id, model, row["published_at"],
                        row["training_run_id"] if pd.notna(row["training_run_id"]) else None,
                        row["artifact"], models["task"].iloc[0], features["feature_name"].tolist())


def served_inputs(reader: TelemetryReader, model_id: str, features: list[str],
                  at: pd.Timestamp, rows: int = ACTIVATION_ROWS) -> pd.DataFrame:
    """Up to ``rows`` of the model's served inputs (``ts``, ``label``, features) over a day next
    to ``at``: the day before it; for a snapshot published before its model served, the first
    day served; for a lake that stops earlier, its last day."""
    columns = ["ts", "label", *features]
    served = reader.serving_samples(model_id, TimeRange(at - RECENT_INPUTS, at), columns=columns)
    if served.empty:
        after = reader.serving_samples(model_id, TimeRange(at, at + 2 * RECENT_INPUTS), columns=columns)
        served = after[after["ts"] < after["ts"].min() + RECENT_INPUTS]
    if served.empty:
        everything = reader.serving_samples(model_id, columns=columns)
        served = everything[everything["ts"] > everything["ts"].max() - RECENT_INPUTS]
    return served.sort_values("ts", kind="stable").tail(rows).reset_index(drop=True)


def stable_history(reader: TelemetryReader, storage: HawkeyeStorage,
                   model_ids: list[str] | None = None) -> pd.DataFrame:
    """:func:`~hawkeye_dagster.analysis.stable_snapshots.stable_snapshots` over the lake, with
    the snapshots whose report found them bad counted as having an incident attributed."""
    from hawkeye_dagster.analysis.stable_snapshots import stable_snapshots

    snapshots = reader.read("snapshots")
    experiments = reader.read("experiments")
    models = reader.read("models", columns=["model_id", "task"]).drop_duplicates("model_id")
    if model_ids is not None:
        snapshots = snapshots[snapshots["model_id"].isin(model_ids)]
        experiments = experiments[experiments["model_id"].isin(model_ids)]
    served = [reader.serving_samples(m, columns=QUALITY_COLUMNS).assign(model_id=m)
              for m in snapshots["model_id"].unique()]
    samples = pd.concat(served, ignore_index=True) if served else \
        pd.DataFrame(columns=[*QUALITY_COLUMNS, "model_id"])
    attributed = [s for s in snapshots["snapshot_id"]
                  if storage.exists(STORE, s, "report.json")
                  and storage.read_json(STORE, s, "report.json")["verdict"] == "bad"]
    return stable_snapshots(snapshots, experiments, samples,
                            dict(zip(models["model_id"], models["task"])), attributed=attributed)


# --- assets ----------------------------------------------------------------------------------

@dg.asset(
    group_name=GROUP, owners=OWNERS,
    kinds={"pandas", "parquet"},
    deps=[telemetry_key("snapshots"), telemetry_key("experiments"), telemetry_key("models"),
          all_partitions("serving_samples")],
    automation_condition=automation.refresh("0 * * * *"),
    description="Every published snapshot judged for operational stability: served 24 h "
                "without degradation against its predecessor (log-loss/calibration on the same "
                "hours, NaN predictions) and without a bad snapshot report.",
)
def stable_snapshots(telemetry: TelemetrySource, storage: HawkeyeStorage) -> dg.MaterializeResult:
    history = stable_history(telemetry.reader(), storage)
    storage.write_parquet(history, STORE, "stable_snapshots.parquet")
    latest = history[history["stable"]].groupby("model_id")["snapshot_id"].last()
    per_model = history.groupby("model_id").agg(
        snapshots=("snapshot_id", "size"), stable=("stable", "sum"),
        degraded=("degraded", "sum")).join(latest.rename("latest_stable")).reset_index()
    return dg.MaterializeResult(metadata={
        "snapshots": len(history), "stable": int(history["stable"].sum()),
        "per_model": md_table(per_model),
        "not_stable": md_table(history.loc[~history["stable"], ["model_id", "snapshot_id",
                                                                "reason"]]),
    })


@dg.asset(
    group_name=GROUP, owners=OWNERS,
    kinds={"pytorch", "json"}, partitions_def=snapshot_partitions,
    deps=[telemetry_key("snapshots"), telemetry_key("models"), telemetry_key("model_features"),
          telemetry_key("experiments"), all_partitions("serving_samples")],
    check_specs=[dg.AssetCheckSpec(
        "artifact_is_valid", asset="snapshot_baseline", blocking=True,
        description="The artifact is a safe torch.export program with one [batch, F] input "
                    "matching the model's features; a refused artifact stops the diagnosis.")],
    description="The snapshot's model and the latest operationally stable snapshots it is "
                "compared with (the last is the rollback target).",
)
def snapshot_baseline(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                      storage: HawkeyeStorage) -> dg.MaterializeResult:
    from hawkeye_dagster.analysis.stable_snapshots import latest_stable
    from hawkeye_dagster.snapshot_io import load_artifact, snapshot_signature

    reader = telemetry.reader()
    info = snapshot_info(reader, context.partition_key)
    history = stable_history(reader, storage, [info.model_id])
    stable = latest_stable(history, info.model_id, info.published_at)
    artifacts = dict(zip(history["snapshot_id"], history["artifact"]))
    try:
        name = reader.resolve_artifact(info.artifact)
        signature = snapshot_signature(
            load_artifact(reader, info.artifact, snapshot_id=info.snapshot_id), name=name)
        if signature.n_features != len(info.features):
            raise BadSnapshotError(f"the program takes {signature.n_features} features, "
                                   f"model_features lists {len(info.features)}", file=name)
        check = dg.AssetCheckResult(check_name="artifact_is_valid", passed=True,
                                    metadata={"artifact": name, "features": len(info.features)})
    except ContractError as exc:  # a refused archive, or an artifact path outside the lake
        check = dg.AssetCheckResult(check_name="artifact_is_valid", passed=False,
                                    description=exc.one_line(),
                                    metadata={"artifact": exc.file or info.artifact})
    baseline = {**vars(info), "published_at": info.published_at.isoformat(),
                "stable": [{"snapshot_id": s, "artifact": artifacts[s]} for s in stable],
                "reference": stable[-1] if stable else None}
    storage.write_json(baseline, STORE, info.snapshot_id, "baseline.json")
    return dg.MaterializeResult(
        metadata={"model_id": info.model_id, "reference": baseline["reference"] or "none",
                  "stable_snapshots": ", ".join(stable) or "none",
                  "model_history": md_table(history[["snapshot_id", "stable", "reason"]])},
        check_results=[check])


def _baseline(storage: HawkeyeStorage, snapshot_id: str) -> dict:
    return storage.read_json(STORE, snapshot_id, "baseline.json")


@dg.asset(
    group_name=GROUP, owners=OWNERS,
    kinds={"pytorch", "parquet"}, partitions_def=snapshot_partitions,
    deps=["snapshot_baseline"],
    description="Per-tensor change against the latest stable snapshot (relative L2, max abs, "
                "mean/std shift, cosine, NaN/inf, shape), scored against the stable-to-stable "
                "history; streamed tensor by tensor.",
)
def snapshot_weight_diff(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                         storage: HawkeyeStorage) -> dg.MaterializeResult:
    from hawkeye_dagster.gather.snapshot_checks import weight_change

    base = _baseline(storage, context.partition_key)
    artifacts = {s["snapshot_id"]: s["artifact"] for s in base["stable"]}
    artifacts[context.partition_key] = base["artifact"]
    diff = weight_change(telemetry.reader(), artifacts, context.partition_key,
                         [s["snapshot_id"] for s in base["stable"]])
    storage.write_parquet(diff.astype({"shape": str, "reference_shape": str}),
                          STORE, context.partition_key, "weight_diff.parquet")
    flagged = diff[diff["flagged"]]
    return dg.MaterializeResult(metadata={
        "reference": base["reference"] or "none", "tensors": len(diff),
        "flagged": len(flagged), "max_z": float(diff["z"].max()) if diff["z"].notna().any() else 0.0,
        "flagged_tensors": md_table(flagged[["parameter", "rel_l2", "z", "reason"]]),
    })


@dg.asset(
    group_name=GROUP, owners=OWNERS,
    kinds={"pytorch", "parquet"}, partitions_def=snapshot_partitions,
    deps=["snapshot_baseline", all_partitions("serving_samples")],
    description="The snapshot run on recent served inputs with every graph node's output "
                "captured: NaN, inf and extreme activations walked upstream to the input "
                "features responsible (verified by re-running) and downstream to the prediction, "
                "with the guard to add.",
)
def snapshot_activations(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                         storage: HawkeyeStorage) -> dg.MaterializeResult:
    sid = context.partition_key
    base = _baseline(storage, sid)
    found = activation_analysis(telemetry.reader(), sid, base["model_id"], base["features"],
                                base["artifact"], pd.Timestamp(base["published_at"]))
    if found is None:
        summary = {"skipped": "no served inputs for the model"}
        storage.write_json(summary, STORE, sid, "activations.json")
        return dg.MaterializeResult(metadata={"skipped": summary["skipped"]})
    summary, nodes, edges = found
    storage.write_json(summary, STORE, sid, "activations.json")
    storage.write_parquet(nodes, STORE, sid, "activation_nodes.parquet")
    storage.write_parquet(edges, STORE, sid, "activation_edges.parquet")
    return dg.MaterializeResult(metadata={
        "summary": summary["summary"], "rows": summary["rows"], "bad_rows": summary["bad_rows"],
        "bad_output_rows": summary["bad_output_rows"],
        "guards": dg.MetadataValue.json(summary["guards"]),
        "bad_nodes": md_table(nodes.loc[nodes["bad"], ["node", "target", "nan_rows",
                                                       "inf_rows", "extreme_rows"]]),
    })


def activation_analysis(reader: TelemetryReader, snapshot_id: str, model_id: str,
                        features: list[str], artifact: str, published_at: pd.Timestamp
                        ) -> tuple[dict, pd.DataFrame, pd.DataFrame] | None:
    """A snapshot run on served inputs next to its publication with every node captured: the
    diagnosis's summary, its per-node table and the program graph's edges (``source``,
    ``target``); ``None`` when the model served no inputs."""
    from hawkeye_dagster.analysis.activations import model_graph
    from hawkeye_dagster.analysis.snapshot_report import activation_summary
    from hawkeye_dagster.gather.snapshot_checks import activation_check
    from hawkeye_dagster.snapshot_io import load_artifact

    inputs = served_inputs(reader, model_id, features, published_at)
    if inputs.empty:
        return None
    found = activation_check(reader, artifact, inputs, features, model_id=model_id,
                             snapshot_id=snapshot_id)
    # the diagnosis keeps no edges: the program is loaded again for its graph
    graph = model_graph(load_artifact(reader, artifact, snapshot_id=snapshot_id).module())
    return (activation_summary(found), found.nodes.astype({"shape": str}),
            pd.DataFrame(list(graph.edges), columns=["source", "target"]))


def model_graph_png(snapshot_id: str, summary: dict, nodes: pd.DataFrame,
                    edges: pd.DataFrame) -> bytes:
    """:func:`activation_analysis`'s result drawn: the model graph with each node's statistics
    and the walk from the responsible input feature to the bad output."""
    from hawkeye_dagster.analysis.model_graph_plot import bad_walk, model_graph_plot

    return model_graph_plot(edges, nodes, walk=bad_walk(edges, nodes, summary["path"]),
                            features=summary["responsible_features"],
                            title=f"snapshot {snapshot_id}: model graph on {summary['rows']} "
                                  "served rows")


def diagnosed_model_graph(reader: TelemetryReader, storage: HawkeyeStorage,
                          snapshot_id: str) -> bytes | None:
    """The model graph of a snapshot: from its stored activation analysis when its diagnostics
    ran, else analysed now (and not stored: that is ``snapshot_activations``'s); ``None``
    without served inputs."""
    if storage.exists(STORE, snapshot_id, "activation_edges.parquet"):
        found = (storage.read_json(STORE, snapshot_id, "activations.json"),
                 *(storage.read_parquet(STORE, snapshot_id, f"activation_{t}.parquet")
                   for t in ("nodes", "edges")))
    else:
        info = snapshot_info(reader, snapshot_id)
        found = activation_analysis(reader, snapshot_id, info.model_id, info.features,
                                    info.artifact, info.published_at)
    return None if found is None else model_graph_png(snapshot_id, *found)


@dg.asset(
    group_name=GROUP, owners=OWNERS,
    kinds={"pytorch", "parquet"}, partitions_def=snapshot_partitions,
    deps=["snapshot_baseline", all_partitions("serving_samples")],
    description="Ablation importance of every feature under the snapshot and under its latest "
                "operationally stable predecessor on the same recent served rows (features "
                "replaced by their mean), with a bootstrap over rows: the features whose "
                "importance changed significantly, most changed first.",
)
def snapshot_importance_change(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                               storage: HawkeyeStorage) -> dg.MaterializeResult:
    import torch

    from hawkeye_dagster.analysis.ablation import ablation_attributions, importance_change
    from hawkeye_dagster.analysis.feature_plots import importance_plot
    from hawkeye_dagster.snapshot_io import load_artifact

    reader = telemetry.reader()
    sid = context.partition_key
    base = _baseline(storage, sid)
    inputs = served_inputs(reader, base["model_id"], base["features"],
                           pd.Timestamp(base["published_at"]), rows=IMPORTANCE_ROWS)
    inputs = inputs.dropna(subset=base["features"])
    if not base["stable"] or inputs.empty:
        reason = "no stable snapshot to compare with" if not base["stable"] else \
            "no served inputs for the model"
        storage.write_json({"skipped": reason}, STORE, sid, "importance.json")
        return dg.MaterializeResult(metadata={"skipped": reason})
    x = torch.tensor(inputs[base["features"]].to_numpy(np.float32))
    attributions = [
        ablation_attributions(load_artifact(reader, artifact, snapshot_id=s).module(), x,
                              x.mean(dim=0))
        for s, artifact in [(sid, base["artifact"]),
                            (base["reference"], base["stable"][-1]["artifact"])]]
    # rows where either snapshot returns NaN/inf carry no importance (activations explain them)
    scored = torch.isfinite(attributions[0]).all(dim=1) & torch.isfinite(attributions[1]).all(dim=1)
    change = importance_change(*(a[scored] for a in attributions), base["features"])
    storage.write_parquet(change, STORE, sid, "importance.parquet")
    storage.write_json({"reference": base["reference"], "rows": int(scored.sum())},
                       STORE, sid, "importance.json")
    metadata = {
        "reference": base["reference"], "rows": int(scored.sum()),
        "significant": int(change["significant"].sum()),
        "ranking": md_table(change[["feature", "ratio", "ratio_low", "ratio_high", "p_value",
                                  "significant"]], limit=10),
    }
    if (np.isfinite(change["ratio"]) & (change["ratio"] > 0)).any():
        metadata["plot"] = dg.MetadataValue.md(
            saved_png_md(storage, importance_plot(change), STORE, sid, "importance.png"))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name=GROUP, owners=OWNERS,
    kinds={"pandas", "parquet"}, partitions_def=snapshot_partitions,
    deps=["snapshot_baseline", telemetry_key("training_runs"),
          telemetry_key("training_metrics"), all_partitions("training_data"),
          all_partitions("serving_samples")],
    description="Snapshot -> training run -> dataset partitions: the run's loss and gradient "
                "curves (divergence, explosion, stall, with the step each began) and its "
                "partitions against their neighbours and against served data.",
)
def snapshot_training(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                      storage: HawkeyeStorage) -> dg.MaterializeResult:
    from hawkeye_dagster.gather.snapshot_checks import training_check
    from hawkeye_dagster.analysis.training_diagnosis import training_lineage

    reader = telemetry.reader()
    sid = context.partition_key
    base = _baseline(storage, sid)
    row = pd.DataFrame([{"snapshot_id": sid, "training_run_id": base["training_run_id"]}])
    lineage = training_lineage(row, reader.read("training_runs"), sid)
    if lineage is None:
        storage.write_json({"skipped": "the snapshot names no known training run"},
                           STORE, sid, "training.json")
        return dg.MaterializeResult(metadata={"skipped": "no known training run"})
    serving = served_inputs(reader, base["model_id"], base["features"],
                            pd.Timestamp(base["published_at"]))
    checked = training_check(reader, lineage, base["features"], base["task"], serving)
    curve, ranked = checked.curve, checked.partitions.ranked
    storage.write_json({"training_run_id": lineage.training_run_id,
                        "dataset_id": lineage.dataset_id, "partitions": lineage.partition_keys,
                        "curve": curve}, STORE, sid, "training.json")
    storage.write_parquet(checked.metrics[["step", "loss", "grad_norm"]], STORE, sid,
                          "training_metrics.parquet")
    storage.write_parquet(ranked, STORE, sid, "training_partitions.parquet")
    return dg.MaterializeResult(metadata={
        "training_run_id": lineage.training_run_id, "partitions": len(lineage.partitions),
        "curve": (curve or {}).get("reason") or ("healthy" if curve else "no metrics"),
        "flagged_partitions": md_table(ranked[ranked["flagged"]]),
    })


def _analysis(storage: HawkeyeStorage, sid: str, name: str, *tables: str) -> tuple:
    """An upstream analysis's summary (``<name>.json``) and stored tables, or ``None`` for
    each when it skipped (the summary then holds ``skipped``: why)."""
    summary = storage.read_json(STORE, sid, f"{name}.json")
    if "skipped" in summary:
        return summary, *(None for _ in tables)
    return summary, *(storage.read_parquet(STORE, sid, t) for t in tables)


@dg.asset(
    group_name=GROUP, owners=OWNERS,
    kinds={"pandas", "json"}, partitions_def=snapshot_partitions,
    deps=["snapshot_weight_diff", "snapshot_activations", "snapshot_importance_change",
          "snapshot_training"],
    check_specs=[dg.AssetCheckSpec(name, asset="snapshot_report", blocking=True,
                                   description=text) for name, text in GATE_CHECKS.items()],
    description="The snapshot's verdict (bad / suspect / healthy) from all its analyses, with "
                "plots (the model graph with each node's activation statistics and the walk "
                "from the bad output back to the input feature), suggested mitigations and "
                "the blocking gate checks for promotion.",
)
def snapshot_report(context: dg.AssetExecutionContext,
                    storage: HawkeyeStorage) -> dg.MaterializeResult:
    from hawkeye_dagster.analysis import snapshot_plots as sp
    from hawkeye_dagster.analysis import snapshot_report as sr

    sid = context.partition_key
    base = _baseline(storage, sid)
    weights = storage.read_parquet(STORE, sid, "weight_diff.parquet")
    activations, nodes, edges = _analysis(storage, sid, "activations", "activation_nodes.parquet",
                                          "activation_edges.parquet")
    training, metrics, partitions = _analysis(storage, sid, "training", "training_metrics.parquet",
                                              "training_partitions.parquet")
    importance_summary, importance = _analysis(storage, sid, "importance", "importance.parquet")
    skipped = [f"{name}: {part['skipped']}" for name, part in
               [("activations", activations), ("training", training),
                ("importance", importance_summary)] if "skipped" in part]
    report = sr.build_report(
        sid, base["model_id"], reference=base["reference"], weights=weights,
        activations=None if nodes is None else activations, curve=training.get("curve"),
        partitions=partitions, importance=importance, skipped=skipped)
    storage.write_json(report.to_json(), STORE, sid, "report.json")
    images = []
    if weights["rel_l2"].notna().any():
        images.append(saved_png_md(storage, sp.weight_change_plot(weights), STORE, sid,
                                   "weights.png"))
    if nodes is not None:
        images.append(saved_png_md(storage, model_graph_png(sid, activations, nodes, edges),
                                   STORE, sid, "model_graph.png"))
        images.append(saved_png_md(storage, sp.activation_range_plot(nodes), STORE, sid,
                                   "activations.png"))
    if metrics is not None and training.get("curve"):
        images.append(saved_png_md(storage, sp.training_curve_plot(metrics, training["curve"]),
                                   STORE, sid, "training_curve.png"))
    markdown = "\n\n".join([
        f"**{report.verdict}**: snapshot `{sid}` of model `{base['model_id']}` "
        f"(compared with `{base['reference'] or 'no stable snapshot'}`)",
        "\n".join(f"- {f}" for f in report.findings) or "- nothing unusual found",
        *(f"_skipped_: {s}" for s in report.skipped), *images])
    checks = [dg.AssetCheckResult(
        check_name=name, passed=gate.passed, description=gate.description,
        severity=dg.AssetCheckSeverity.ERROR if gate.checked else dg.AssetCheckSeverity.WARN)
        for name, gate in report.gates.items()]
    return dg.MaterializeResult(
        metadata={"verdict": report.verdict, "report": dg.MetadataValue.md(markdown),
                  "mitigations": dg.MetadataValue.json(report.mitigations)},
        check_results=checks)


SNAPSHOT_DIAGNOSTICS = [snapshot_baseline, snapshot_weight_diff, snapshot_activations,
                        snapshot_importance_change, snapshot_training, snapshot_report]

#: in one process: the steps are seconds each, a process per step would cost more than them
snapshot_diagnostics_job = dg.define_asset_job(
    "snapshot_diagnostics", selection=SNAPSHOT_DIAGNOSTICS, partitions_def=snapshot_partitions,
    executor_def=dg.in_process_executor, tags=CRASH_RETRY_TAGS,
    description="Diagnose one published snapshot (launched by the publication sensor).")

defs = dg.Definitions(assets=[stable_snapshots, *SNAPSHOT_DIAGNOSTICS],
                      jobs=[snapshot_diagnostics_job])
