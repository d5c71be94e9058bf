"""Carry out a pause plan and undo it, every step in the audit trail.

Pausing is idempotent (a pipeline this incident already holds paused is left
alone, so running the pause twice is one pause) and never touches a pipeline
outside the plan. A pipeline that was already paused before stays the
business of whoever paused it: it is recorded and never resumed by us.
Resuming restores the exact state recorded before the pause. A pause that
failed after the state was read (the orchestrator may have applied it and lost
the answer) is retried as this incident's: a pipeline found paused then is
held with the state read before the failed attempt. Every pause is written ahead: a
``pausing`` entry with the state before goes to the trail before the orchestrator is asked,
and becomes the pipeline's outcome right after, so a run killed between the two (its pause
applied or not) leaves a trail that its retry reads as an interrupted pause and completes
exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd

from hawkeye_dagster.mitigation.audit import AuditStore
from hawkeye_dagster.mitigation.controls import PAUSED, ControlError, PipelineControl
from hawkeye_dagster.mitigation.planning import PausePlan, PausePolicy, refusal

RESULT_COLUMNS = ("incident", "pipeline_id", "orchestrator", "target", "action", "outcome",
                  "state_before", "reason", "ts", "actor")


def pause_pipelines(plan: PausePlan, policy: PausePolicy, controls: Mapping[str, PipelineControl],
                    audit: AuditStore, *, actor: str, automatic: bool = False,
                    reason: str = "") -> pd.DataFrame:
    """Pause the plan's pipelines as far as ``policy`` allows.

    ``controls`` maps an orchestrator (``dagster``, ``airflow``) to its
    control; a pipeline whose orchestrator has none is recorded for a person
    to pause (outcome ``recorded``). Returns one row per pipeline
    (:data:`RESULT_COLUMNS`); outcomes: ``paused``, ``recorded``,
    ``already_paused`` (paused before, left alone), ``held`` (this incident
    already paused it; nothing recorded again), ``dry_run``, ``refused``,
    ``failed`` (the orchestrator's error in ``reason``; ``state_before`` when it was read,
    so a retry that finds the pipeline paused knows the pause was applied and whose it is).
    Each pipeline's entries are in the audit table before the next pipeline is touched.
    """
    holding, interrupted = audit.pause_state(plan.incident)
    held = set(holding["pipeline_id"])
    refused = refusal(plan, policy, automatic=automatic)
    now = pd.Timestamp.now(tz="UTC")
    results = []
    for pipeline in plan.pipelines.itertuples(index=False):
        entry = {"incident": plan.incident, "pipeline_id": pipeline.pipeline_id,
                 "orchestrator": pipeline.orchestrator, "target": pipeline.target,
                 "action": "pause", "state_before": None, "ts": now, "actor": actor,
                 "reason": f"{reason} (root cause at {plan.cause_node}, confidence "
                           f"{plan.confidence:.2f})".lstrip()}
        control = controls.get(pipeline.orchestrator)
        intent: list[int] = []           # the row written ahead of asking the orchestrator
        if pipeline.pipeline_id in held:
            entry |= {"outcome": "held", "reason": "already paused for this incident"}
        elif refused:
            entry |= {"outcome": "dry_run" if policy.dry_run else "refused", "reason": refused}
        elif control is None:
            entry["outcome"] = "recorded"
            entry["reason"] += f"; no {pipeline.orchestrator} control configured: pause it by hand"
        else:
            entry |= _pause(control, pipeline.target, interrupted.get(pipeline.pipeline_id),
                            ahead=lambda before, entry=entry, intent=intent: intent.append(
                                audit.write_ahead(entry | {"state_before": before})))
        if entry["outcome"] != "held":
            audit.settle(intent[0] if intent else None, entry)
        results.append(entry)
    return pd.DataFrame(results, columns=list(RESULT_COLUMNS))


def resume_pipelines(incident: str, controls: Mapping[str, PipelineControl], audit: AuditStore,
                     *, actor: str) -> pd.DataFrame:
    """Restore every pipeline the incident holds paused to its recorded state before.

    Returns one row per pipeline (:data:`RESULT_COLUMNS`); outcomes:
    ``resumed``, ``recorded`` (no control: resume it by hand), ``failed``.
    Running it again finds nothing held and does nothing.
    """
    now = pd.Timestamp.now(tz="UTC")
    results = []
    for pause in audit.holding(incident).itertuples(index=False):
        entry = {"incident": incident, "pipeline_id": pause.pipeline_id,
                 "orchestrator": pause.orchestrator, "target": pause.target, "action": "resume",
                 "state_before": pause.state_before, "ts": now, "actor": actor,
                 "reason": "incident mitigated"}
        control = controls.get(pause.orchestrator)
        if pause.outcome == "recorded" or control is None:
            entry |= {"outcome": "recorded", "reason": "no control configured: resume it by hand"}
        else:
            entry |= _restore(control, pause.target, pause.state_before)
        results.append(entry)
    audit.record(results)
    return pd.DataFrame(results, columns=list(RESULT_COLUMNS))


def _pause(control: PipelineControl, target: str, interrupted: str | None,
           ahead: Callable[[str], None]) -> dict:
    """Pause one target unless already paused; orchestrator errors become ``failed``.

    The state is read (and kept in ``state_before``) before the pause is tried, because a
    pause whose answer is lost may still have been applied. ``interrupted`` is the state
    before such an earlier failed pause of this incident: a target found paused then is
    this incident's pause, not someone else's. ``ahead(state)`` writes the intent to the
    trail just before the pause is asked for.
    """
    try:
        before = control.state(target)
    except ControlError as exc:
        return {"outcome": "failed", "reason": str(exc)}
    if before.startswith(PAUSED) and interrupted is not None:
        return {"outcome": "paused", "state_before": interrupted,
                "reason": "found paused after this incident's failed pause: its answer was lost"}
    if before.startswith(PAUSED):
        return {"outcome": "already_paused", "state_before": before,
                "reason": "paused before this incident; left as it is"}
    ahead(before)
    try:
        control.pause(target)
    except ControlError as exc:
        return {"outcome": "failed", "state_before": before, "reason": str(exc)}
    return {"outcome": "paused", "state_before": before}


def _restore(control: PipelineControl, target: str, state: str) -> dict:
    """Restore one target; orchestrator errors become ``failed``."""
    try:
        control.restore(target, state)
    except ControlError as exc:
        return {"outcome": "failed", "reason": str(exc)}
    return {"outcome": "resumed"}
