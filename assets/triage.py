"""The incident report: HawkEye's decision tree as an asset, one ``incident`` partition each.

Whoever opens an incident (the top-line, feature-alert or snapshot sensor,
the ``triage`` command) writes its :class:`~hawkeye_dagster.incidents.Incident`
to storage and adds its id as a partition; materializing the partition runs
:func:`~hawkeye_dagster.triage.tree.triage` over the lake and stores the
contract's JSON report under ``reports/<incident>.json``, with a readable
summary and plots in the UI: the lineage path with its nodes' statistics, and
the model graph of a blamed snapshot. Each step links to the asset, partition
and run pages of the evidence it used, so the UI guides from the verdict to the
data. A blocking check holds every report to the contract's JSON schema.
"""

import re

import dagster as dg
import pandas as pd

from hawkeye_dagster.assets.metadata import asset_url, md_link, png_md, run_url
from hawkeye_dagster.assets.partitions import incident_partitions
from hawkeye_dagster.assets.snapshots import diagnosed_model_graph
from hawkeye_dagster.assets.telemetry import all_partitions, telemetry_key
from hawkeye_dagster.incidents import INCIDENTS_DIR, REPORTS_DIR, Incident
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.run_launcher import CRASH_RETRY_TAGS

GROUP = "triage"
OWNERS = ["team:ml-oncall"]
INCIDENT_REPORT = dg.AssetKey("incident_report")
#: the telemetry the decision tree reads (all partitions of the partitioned ones)
_READS = ("topline_metrics", "models", "model_features", "experiments", "snapshots",
          "serving_samples", "features", "lineage_nodes", "lineage_edges", "lineage_node_stats",
          "lineage_changes", "pipelines", "feature_alerts", "training_runs", "training_metrics",
          "training_data")


def write_incident(storage: HawkeyeStorage, incident: Incident) -> str:
    """Store ``incident`` where its report asset reads it; returns its id (partition key)."""
    storage.write_json(incident.to_json(), INCIDENTS_DIR, f"{incident.incident_id}.json")
    return incident.incident_id


def read_incident(storage: HawkeyeStorage, incident_id: str) -> Incident:
    return Incident.from_json(storage.read_json(INCIDENTS_DIR, f"{incident_id}.json"))


def read_report(storage: HawkeyeStorage, incident_id: str) -> dict:
    """The stored report of a materialized incident."""
    return storage.read_json(REPORTS_DIR, f"{incident_id}.json")


@dg.asset(
    key=INCIDENT_REPORT,
    partitions_def=incident_partitions,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"pandas", "json"},
    deps=[all_partitions(t) for t in _READS],
    check_specs=[dg.AssetCheckSpec(
        "report_conforms_to_contract", asset=INCIDENT_REPORT, blocking=True,
        description="The report conforms to the contract's JSON schema (report.schema.json).")],
    description="Root-cause report of an incident: HawkEye's decision tree from its entry "
                "(top-line anomaly, feature alert, new snapshot, or automatic detection) down to "
                "ranked root causes with confidences and mitigations, as the contract's JSON "
                "(`reports/<incident>.json`) and as markdown with plots (the lineage path with "
                "its nodes' statistics, the model graph of a blamed snapshot) and links to the "
                "evidence of each step.",
)
def incident_report(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                    storage: HawkeyeStorage) -> dg.MaterializeResult:
    import jsonschema

    from hawkeye_dagster.triage.plots import report_plots
    from hawkeye_dagster.triage.report import validate_report
    from hawkeye_dagster.triage.summary import report_markdown
    from hawkeye_dagster.triage.tree import triage

    incident_id = context.partition_key
    incident = read_incident(storage, incident_id)
    reader = telemetry.reader()
    result = triage(reader, incident.entry, incident.window, progress=context.log.info)
    report = result.report
    try:
        validate_report(report)
        check = dg.AssetCheckResult(check_name="report_conforms_to_contract", passed=True)
    except jsonschema.ValidationError as err:
        check = dg.AssetCheckResult(check_name="report_conforms_to_contract", passed=False,
                                    metadata={"problem": err.message,
                                              "at": "/".join(map(str, err.absolute_path))})
    storage.write_json(report, REPORTS_DIR, f"{incident_id}.json")
    path = result.evidence.lineage_path
    node_stats = reader.read("lineage_node_stats", isin={"node_id": path},
                             time_range=incident.window) if path else None
    plots = report_plots(result.evidence, node_stats)
    for cause in report["root_causes"]:
        if cause["kind"] == "snapshot":
            graph = diagnosed_model_graph(reader, storage, cause["id"])
            if graph is not None:
                plots[f"Model graph of {cause['id']}"] = graph
    images = {}
    for title, png in plots.items():
        # a title names ids, which may hold "/" (a training partition): one flat file name
        name = re.sub(r"[^\w.-]+", "_", title.lower()) + ".png"
        storage.write_bytes(png, REPORTS_DIR, incident_id, name)
        images[title] = png_md(png, title)
    day = (result.evidence.onset or incident.window.end - pd.Timedelta("1ns")).strftime("%Y-%m-%d")
    links = [_step_links(context.instance, _evidence(step, report, incident_id, day))
             for step in report["steps"]]
    top = report["root_causes"][0] if report["root_causes"] else None
    return dg.MaterializeResult(check_results=[check], metadata={
        "verdict": report["verdict"],
        "root_cause": f"{top['kind']} {top['id']}" if top else "none",
        "confidence": dg.MetadataValue.float(top["confidence"] if top else 0.0),
        "report": dg.MetadataValue.md(report_markdown(
            report, {"Evidence of each step": _evidence_table(report, links), **images})),
        "json": dg.MetadataValue.json(report),
        "path": dg.MetadataValue.path(str(storage.path(REPORTS_DIR, f"{incident_id}.json"))),
        **_step_urls(report, links),
        "this run": dg.MetadataValue.url(run_url(context.run_id)),
    })


def _evidence(step: dict, report: dict, incident_id: str,
              day: str) -> list[tuple[dg.AssetKey, str | None]]:
    """The assets (and partitions) a step of the decision tree read or stands on: its
    telemetry, and the project's assets that hold the same analysis for a closer look.

    ``day`` is the incident's onset day, the partition of the daily evidence."""
    models, snapshots = report["suspects"]["models"], report["suspects"]["snapshots"]
    model = models[0] if models else None
    key = dg.AssetKey
    if step["step"] == "topline":
        return [(telemetry_key("topline_metrics"), None)]
    if step["step"] == "topline_to_models":
        return [(telemetry_key("serving_samples"), f"{day}|{model}" if model else None),
                (telemetry_key("models"), None)]
    if step["step"] == "model_to_snapshots":
        return [(telemetry_key("experiments"), None), (key("stable_snapshots"), None),
                *((key("snapshot_report"), s) for s in snapshots)]
    if step["step"] == "model_to_features":
        return [(key("feature_ranking"), model), (key("feature_drift"), f"{day}|{model}")] \
            if model else []
    if step["step"] == "features_to_upstream":
        upstream = [(key("upstream_root_cause"), incident_id)] \
            if report["entry"]["kind"] == "feature_alert" else []
        return [*upstream, (key("lineage_graph"), None),
                (key("lineage_node_changepoints"), day)]
    if step["step"] == "feature_alert":
        return [(telemetry_key("feature_alerts"), None), (key("feature_stats"), None)]
    if step["step"] == "snapshot_diagnosis":
        snapshot = step.get("evidence", {}).get("snapshot", {}).get("snapshot_id")
        return [(key(name), snapshot) for name in ("snapshot_report", "snapshot_activations")
                if snapshot]
    if step["step"] == "traffic":
        return [(telemetry_key("experiments"), None)]
    if step["step"] == "auto":
        return [(telemetry_key(t), None) for t in ("topline_metrics", "feature_alerts",
                                                   "snapshots")]
    return []


def _step_links(instance: dg.DagsterInstance,
                evidence: list[tuple[dg.AssetKey, str | None]]) -> list[tuple[str, str]]:
    """(text, URL) of each evidence asset's page, and of the run that last materialized it."""
    links = []
    for key, partition in evidence:
        name = key.to_user_string() + (f" {partition}" if partition else "")
        links.append((name, asset_url(key, partition)))
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition
                                  else None), limit=1).records
        if found:
            links.append((f"its run {found[0].run_id[:8]}", run_url(found[0].run_id)))
    return links


def _evidence_table(report: dict, links: list[list[tuple[str, str]]]) -> str:
    rows = ["| # | step | evidence |", "|---|---|---|"]
    rows += [f"| {i} | {step['step']} | "
             + (", ".join(md_link(text, url) for text, url in found) or "-") + " |"
             for i, (step, found) in enumerate(zip(report["steps"], links), 1)]
    return "\n".join(rows)


def _step_urls(report: dict, links: list[list[tuple[str, str]]]) -> dict[str, dg.MetadataValue]:
    """Each step's first evidence page as a URL entry of the metadata."""
    return {f"step {i} {step['step']}": dg.MetadataValue.url(found[0][1])
            for i, (step, found) in enumerate(zip(report["steps"], links), 1) if found}


incident_report_job = dg.define_asset_job(
    "incident_report_job", selection=[INCIDENT_REPORT], partitions_def=incident_partitions,
    tags=CRASH_RETRY_TAGS, description="Triage one incident: its report and the report's schema check.")



def materialize_incident(defs: dg.Definitions, incident: Incident,
                         instance: dg.DagsterInstance | None = None) -> dict:
    """Open ``incident`` and materialize its report in-process with ``defs`` (the same
    definitions the UI loads); returns the report. ``instance`` defaults to an ephemeral one.

    Bad input met inside the run (a broken table, an unknown id) is re-raised as the
    original :class:`~hawkeye_dagster.errors.HawkeyeError`, not Dagster's wrapper, and an
    interrupted run as :class:`KeyboardInterrupt`.
    """
    storage: HawkeyeStorage = defs.resources["storage"]
    write_incident(storage, incident)
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(incident_partitions.name, [incident.incident_id])
    job = defs.resolve_job_def(incident_report_job.name)
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    try:
        job.execute_in_process(partition_key=incident.incident_id, instance=instance,
                               run_config=quiet)
    except dg.DagsterUserCodeExecutionError as err:
        raise err.user_exception from None
    except dg.DagsterExecutionInterruptedError:
        # Dagster's own form of Ctrl-C in a run: the caller's, so its cleanup runs as usual
        raise KeyboardInterrupt from None
    return read_report(storage, incident.incident_id)


defs = dg.Definitions(assets=[incident_report], jobs=[incident_report_job])
