"""The incident report: HawkEye's decision tree as an asset, one ``incident`` partition each.

Whoever opens an incident (the top-line, feature-alert or snapshot sensor,
the ``triage`` command) writes its :class:`~hawkeye_dagster.incidents.Incident`
to storage and adds its id as a partition; materializing the partition runs
:func:`~hawkeye_dagster.triage.tree.triage` over the lake and stores the
contract's JSON report under ``reports/<incident>.json``, with a readable
summary and plots in the UI. A blocking check holds every report to the
contract's JSON schema.
"""

import dagster as dg

from hawkeye_dagster.assets.partitions import incident_partitions
from hawkeye_dagster.assets.metadata import png_md
from hawkeye_dagster.assets.telemetry import all_partitions
from hawkeye_dagster.incidents import INCIDENTS_DIR, REPORTS_DIR, Incident
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource

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
                "(`reports/<incident>.json`) and as markdown with plots.",
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
    result = triage(telemetry.reader(), incident.entry, incident.window,
                    progress=context.log.info)
    report = result.report
    try:
        validate_report(report)
        check = dg.AssetCheckResult(check_name="report_conforms_to_contract", passed=True)
    except jsonschema.ValidationError as err:
        check = dg.AssetCheckResult(check_name="report_conforms_to_contract", passed=False,
                                    metadata={"problem": err.message,
                                              "at": "/".join(map(str, err.absolute_path))})
    storage.write_json(report, REPORTS_DIR, f"{incident_id}.json")
    images = {}
    for title, png in report_plots(result.evidence).items():
        name = title.lower().replace(" ", "_") + ".png"
        storage.write_bytes(png, REPORTS_DIR, incident_id, name)
        images[title] = png_md(png, title)
    top = report["root_causes"][0] if report["root_causes"] else None
    return dg.MaterializeResult(check_results=[check], metadata={
        "verdict": report["verdict"],
        "root_cause": f"{top['kind']} {top['id']}" if top else "none",
        "confidence": dg.MetadataValue.float(top["confidence"] if top else 0.0),
        "report": dg.MetadataValue.md(report_markdown(report, images)),
        "json": dg.MetadataValue.json(report),
        "path": dg.MetadataValue.path(str(storage.path(REPORTS_DIR, f"{incident_id}.json"))),
    })


incident_report_job = dg.define_asset_job(
    "incident_report_job", selection=[INCIDENT_REPORT], partitions_def=incident_partitions,
    description="Triage one incident: its report and the report's schema check.")



def materialize_incident(defs: dg.Definitions, incident: Incident,
                         instance: dg.DagsterInstance | None = None) -> dict:
    """Open ``incident`` and materialize its report in-process with ``defs`` (the same
    definitions the UI loads); returns the report. ``instance`` defaults to an ephemeral one.

    Bad input met inside the run (a broken table, an unknown id) is re-raised as the
    original :class:`~hawkeye_dagster.errors.HawkeyeError`, not Dagster's wrapper.
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
    return read_report(storage, incident.incident_id)


defs = dg.Definitions(assets=[incident_report], jobs=[incident_report_job])
