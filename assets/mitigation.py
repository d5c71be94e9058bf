"""Mitigation jobs: pause the pipelines behind an incident's upstream root cause, and resume them.

``pause_upstream_pipelines_job`` plans the pause from the incident's root
cause (its incident report, else its ``upstream_root_cause`` analysis) and
carries it out as the ``mitigation`` resource's policy allows: dry run by
default, for real only above a confidence and under a number of pipelines.
``auto_pause_sensor`` launches it by itself, on new incident reports that
blame a lineage node, only when ``auto_pause`` is configured.
``resume_pipelines_job`` restores exactly the state recorded before.
"""

import dagster as dg

from hawkeye_dagster.assets.lineage import UPSTREAM_FILE
from hawkeye_dagster.assets.triage import INCIDENT_REPORT
from hawkeye_dagster.gather.lineage import lineage_from_reader
from hawkeye_dagster.incidents import INCIDENTS_DIR, REPORTS_DIR
from hawkeye_dagster.mitigation.pausing import pause_pipelines, resume_pipelines
from hawkeye_dagster.mitigation.planning import plan_pause
from hawkeye_dagster.resources import HawkeyeStorage, MitigationSettings, TelemetrySource

#: root-cause kinds that a pause can mitigate (bad data, or a bad change, at a lineage node)
LINEAGE_KINDS = ("lineage_node", "lineage_change")


class PauseConfig(dg.Config):
    incident: str
    """The incident (its ``incident`` partition key)."""
    dry_run: bool = True
    """Record what would be paused without touching anything."""
    actor: str = "dagster"
    reason: str = ""
    automatic: bool = False
    """Launched by a sensor rather than a person (then ``auto_pause`` must be on)."""


class ResumeConfig(dg.Config):
    incident: str
    actor: str = "dagster"


@dg.op(description="Pause the pipelines producing an incident's bad upstream node and the nodes it "
                   "feeds on the way to the features (dry run by default).")
def pause_upstream_pipelines(context: dg.OpExecutionContext, config: PauseConfig,
                             telemetry: TelemetrySource, storage: HawkeyeStorage,
                             mitigation: MitigationSettings) -> dg.Output:
    cause = lineage_root_cause(storage, config.incident)
    if cause is None:
        context.log.info(f"incident {config.incident} has no upstream lineage root cause: "
                         "nothing to pause")
        return dg.Output([], metadata={"pipelines": 0})
    plan = plan_pause(lineage_from_reader(telemetry.reader()), cause["node"], cause["features"],
                      incident=config.incident, confidence=cause["confidence"])
    context.log.info(f"root cause {cause['node']} (from {cause['source']}): "
                     f"{len(plan.pipelines)} pipeline(s) on its path to the features")
    result = pause_pipelines(plan, mitigation.policy(config.dry_run), mitigation.controls(),
                             mitigation.audit(storage), actor=config.actor,
                             automatic=config.automatic, reason=config.reason)
    return _reported(result)


def lineage_root_cause(storage: HawkeyeStorage, incident: str) -> dict | None:
    """The incident's top root cause when it is upstream data or a change at a lineage node:
    ``{"node", "confidence", "features", "source"}``, else ``None``.

    From the incident report (the decision tree's calibrated verdict) when it
    exists, else from the incident's own upstream analysis.
    """
    if storage.exists(REPORTS_DIR, f"{incident}.json"):
        report = storage.read_json(REPORTS_DIR, f"{incident}.json")
        top = report["root_causes"][0] if report["root_causes"] else {}
        if top.get("kind") not in LINEAGE_KINDS:
            return None
        return {"node": top["id"], "confidence": top["confidence"],
                "features": report["suspects"]["features"], "source": "incident report"}
    upstream = storage.read_json(INCIDENTS_DIR, incident, UPSTREAM_FILE)
    if not upstream.get("cause_node"):
        return None
    return {"node": upstream["cause_node"], "confidence": upstream["confidence"],
            "features": list(upstream["features"]), "source": "upstream analysis"}


@dg.op(description="Restore every pipeline an incident paused to its recorded state before.")
def resume_paused_pipelines(config: ResumeConfig, storage: HawkeyeStorage,
                            mitigation: MitigationSettings) -> dg.Output:
    return _reported(resume_pipelines(config.incident, mitigation.controls(),
                                      mitigation.audit(storage), actor=config.actor))


def _reported(result) -> dg.Output:
    """The op's output with the outcome table; a failed orchestrator call fails the run."""
    shown = result[["pipeline_id", "orchestrator", "target", "outcome", "state_before", "reason"]]
    metadata = {"pipelines": len(result), "outcomes": dg.MetadataValue.md(
        shown.to_markdown(index=False) if len(result) else "nothing to do")}
    failed = result[result["outcome"] == "failed"]
    if len(failed):
        raise dg.Failure(f"{len(failed)} pipeline(s) could not be changed: "
                         + "; ".join(failed["reason"]), metadata=metadata)
    return dg.Output(result.drop(columns="ts").to_dict("records"), metadata=metadata)


@dg.job(description="Pause the upstream pipelines of an incident (see the `mitigation` resource "
                    "for the policy; dry run unless `dry_run: false`).")
def pause_upstream_pipelines_job():
    pause_upstream_pipelines()


@dg.job(description="Resume the pipelines an incident paused, exactly as they were before.")
def resume_pipelines_job():
    resume_paused_pipelines()


@dg.sensor(job=pause_upstream_pipelines_job, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Pauses an incident's upstream pipelines by itself when the `mitigation` "
                       "resource allows automatic pausing and the incident report blames a "
                       "lineage node confidently enough.")
def auto_pause_sensor(context: dg.SensorEvaluationContext, mitigation: MitigationSettings):
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=INCIDENT_REPORT,
                              after_storage_id=int(context.cursor) if context.cursor else None),
        limit=100, ascending=True).records
    if not records:
        return dg.SkipReason("no new incident report")
    cursor = str(records[-1].storage_id)
    if not mitigation.auto_pause:
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"{len(records)} new report(s); automatic pausing is off (mitigation.auto_pause)"),
            cursor=cursor)
    requests = []
    for record in records:
        metadata = record.asset_materialization.metadata
        cause = metadata.get("root_cause")
        confidence = metadata.get("confidence")
        if (cause is not None and cause.value.split(" ")[0] in LINEAGE_KINDS
                and confidence is not None and confidence.value >= mitigation.min_confidence):
            incident = record.partition_key
            requests.append(dg.RunRequest(run_key=f"auto-pause:{incident}", run_config={
                "ops": {"pause_upstream_pipelines": {"config": {
                    "incident": incident, "dry_run": False, "automatic": True,
                    "actor": "auto_pause_sensor", "reason": "automatic pause"}}}}))
    return dg.SensorResult(run_requests=requests, cursor=cursor, skip_reason=None if requests else
                           dg.SkipReason(f"no new report blames a lineage node with confidence "
                                         f"{mitigation.min_confidence} or more"))


defs = dg.Definitions(jobs=[pause_upstream_pipelines_job, resume_pipelines_job],
                      sensors=[auto_pause_sensor])
