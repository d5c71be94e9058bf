"""The top-line branches: from a degraded top line to the models and snapshots behind it.

``topline`` scans the top line of the entry's product and segment and sends
the most severe anomaly on; ``topline_to_models`` follows an anomaly to the
serving models whose prediction quality degraded with it (the top suspect,
then any runner-up whose confidence is close, in turn until one path finds
a root cause); ``model_to_snapshots`` compares a model's snapshots over the
rollout timeline and sends a suspect snapshot to its diagnosis, or the
model's features when every snapshot degraded alike. ``auto`` finds the
incidents of the window and enters at the most severe.
"""

from __future__ import annotations

import pandas as pd

from hawkeye_dagster.analysis.model_isolation import bucket_quality, rank_models
from hawkeye_dagster.analysis.rollout import isolate_snapshots
from hawkeye_dagster.analysis.topline import detect_topline_anomalies, seasonal_scores
from hawkeye_dagster.triage import calibration
from hawkeye_dagster.triage.branch import Findings, TriageContext, Visit, branch
from hawkeye_dagster.triage.report import iso

#: alert severities that open an incident in ``auto`` mode
ALERT_SEVERITIES = ("critical", "warning")
#: a top-line excursion whose median robust z is below this is within what like hours vary by
#: (the 3-sigma control limit): weak root causes then mean nothing is significant, not
#: conflicting evidence
SIGNIFICANT_SHIFT_Z = 3.0
#: runner-up suspect models whose model confidence is within this of the top one's are followed
#: too, in turn, when the paths before them found no root cause
CLOSE_CONFIDENCE = 0.05
#: at most this many suspect models are followed
MAX_MODELS = 3


@branch("topline", "topline", calibration=calibration.ROOT_CAUSES)
def from_topline(context: TriageContext, visit: Visit, found: Findings) -> None:
    product, segment = visit.get("product"), visit.get("segment")
    context.progress(f"top line: scanning {product or 'all products'}"
                     f"{'/' + segment if segment else ''}")
    metrics = context.data.topline(product, segment)
    anomalies = detect_topline_anomalies(metrics, context.data.window) if len(metrics) else None
    where = "/".join(x for x in (product, segment) if x) or "any product"
    if anomalies is None or anomalies.empty:
        found.step("topline", f"no top-line metric of {where} degraded significantly in the "
                              "window")
        found.conclude("no_issue")
        return
    found.follow("anomaly", anomaly=anomalies.iloc[0],
                 scores=seasonal_scores(metrics, context.data.window.start))


@branch("topline_to_models", "anomaly", calibration=calibration.ROOT_CAUSES)
def topline_to_models(context: TriageContext, visit: Visit, found: Findings) -> None:
    """Follow one top-line anomaly to the models that degraded with it."""
    anomaly, scores = visit["anomaly"], visit["scores"]
    series = (anomaly["product"], anomaly["segment"], anomaly["metric"])
    onset, end = anomaly["onset"], anomaly["end"]
    found.degraded = bool(anomaly["shift_z"] >= SIGNIFICANT_SHIFT_Z)
    found.note(topline=scores, series=series, onset=onset, end=end)
    found.step(
        "topline",
        f"{anomaly['metric']} of {anomaly['product']}/{anomaly['segment']} "
        f"{'fell' if anomaly['relative_change'] < 0 else 'rose'} by "
        f"{abs(anomaly['relative_change']):.1%} from {iso(onset)} "
        f"(robust z {anomaly['shift_z']:.1f} against like hours)",
        confidence=calibration.topline_confidence(anomaly["score"]),
        product=series[0], segment=series[1], metric=series[2], onset=onset, end=end,
        relative_change=anomaly["relative_change"], shift_z=anomaly["shift_z"],
        score=anomaly["score"])
    ranking = _rank_models(context, series, scores, onset, end)
    suspects = ranking[ranking["suspect"]]
    found.suspect("models", suspects["model_id"])
    if suspects.empty:  # e.g. fewer requests: volume and metric fell with models unchanged
        found.step("topline_to_models",
                   "no serving model's prediction quality degraded with the top line: the cause "
                   "lies outside the models, nothing in them is significant",
                   models=ranking.to_dict("records"))
        found.conclude("no_issue")
        return
    confidence = [calibration.model_confidence(z, c)
                  for z, c in zip(suspects["degradation_z"], suspects["correlation"])]
    top = suspects.iloc[0]
    found.step(
        "topline_to_models",
        f"model {top['model_id']} ({top['traffic_share']:.0%} of the segment's traffic) "
        f"degraded with the top line: loss {top['loss_before']:.3g} -> {top['loss_after']:.3g}"
        f", degradation z {top['degradation_z']:.1f}, correlation {top['correlation']:.2f}",
        confidence=confidence[0], models=ranking.to_dict("records"))
    for model_id, p in list(zip(suspects["model_id"], confidence))[:MAX_MODELS]:
        if p >= confidence[0] - CLOSE_CONFIDENCE:
            found.follow("model", model_id=model_id, segment=series[1], onset=onset, end=end,
                         grid=scores.z.index)
    found.until = ("root_cause_found",)


def _rank_models(context: TriageContext, series, scores, onset, end) -> pd.DataFrame:
    product, segment, _ = series
    models = context.data.models
    serving = models[(models["product"] == product) & (models["segment"] == segment)]
    context.progress(f"models: scoring {len(serving)} models serving {product}/{segment}")
    qualities = {m: bucket_quality(context.data.quality_samples(m, segment), t, scores.bucket)
                 for m, t in zip(serving["model_id"], serving["task"])}
    tasks = dict(zip(serving["model_id"], serving["task"]))
    return rank_models(scores.z[series], onset, end, qualities, tasks)


@branch("model_to_snapshots", "model", calibration=calibration.ROOT_CAUSES)
def model_to_snapshots(context: TriageContext, visit: Visit, found: Findings) -> None:
    """A degraded model's snapshots over the rollout timeline: one carries it, or none does."""
    model_id, segment, onset, end = (visit[k] for k in ("model_id", "segment", "onset", "end"))
    grid: pd.DatetimeIndex = visit["grid"]
    context.progress(f"snapshots: comparing the snapshots of {model_id} in {segment}")
    quality = bucket_quality(context.data.quality_samples(model_id, segment),
                             context.data.task(model_id), pd.Timedelta(grid.freq),
                             by=["snapshot_id"])
    finding = isolate_snapshots(quality, context.data.experiments(model_id, segment), grid,
                                onset, end)
    found.note(model_id=model_id, quality=quality, rollout=finding)
    evidence = {"snapshots": finding.snapshots.to_dict("records"),
                "traffic_changes": finding.traffic_changes.to_dict("records")}
    if finding.verdict == "snapshot":
        found.suspect("snapshots", finding.suspects)
        lead = finding.snapshots.set_index("snapshot_id").loc[finding.suspects[0]]
        text = (f"snapshot {finding.suspects[0]} of {model_id} carries its degradation: "
                f"{lead['contribution']:.3g} of the model's loss rise {finding.delta:.3g} "
                f"(loss {lead['loss_during']:.3g}; against its peers on the same hours, "
                f"peer z {lead['peer_z']:.1f})")
        if finding.traffic_experiment:
            found.suspect("experiments", [finding.traffic_experiment])
            text += (f"; it already served before the onset and its arm "
                     f"{finding.traffic_experiment} grew from {lead['share_before']:.0%} to "
                     f"{lead['share_during']:.0%} of the traffic")
        found.step("model_to_snapshots", text,
                   confidence=calibration.snapshot_confidence(lead["peer_z"]), **evidence)
        found.follow("snapshots", model_id=model_id, rollout=finding)
        return
    if finding.verdict == "all_snapshots":
        text = (f"every snapshot of {model_id} serving since {iso(onset)} degraded alike: "
                "the snapshots are not the cause, the features are the suspects")
    else:
        text = (f"the rollout of {model_id} explains nothing (no snapshot worse than its peers,"
                " none newly arrived): looking at the features")
    found.step("model_to_snapshots", text, **evidence)
    found.follow("features", model_id=model_id, onset=onset, end=end)


@branch("auto", "auto", calibration=calibration.ROOT_CAUSES)
def auto(context: TriageContext, visit: Visit, found: Findings) -> None:
    """Find the incidents in the window and enter at the most severe one."""
    data = context.data
    metrics = data.topline()
    anomalies = detect_topline_anomalies(metrics, data.window) if len(metrics) else None
    alerts = data.table("feature_alerts", time_range=data.window)
    alerts = alerts[alerts["severity"].isin(ALERT_SEVERITIES)]
    published = data.snapshots
    new = published[(published["published_at"] >= data.window.start)
                     & (published["published_at"] < data.window.end)]
    counts = {"topline_anomalies": 0 if anomalies is None else len(anomalies),
              "feature_alerts": len(alerts), "new_snapshots": len(new)}
    if anomalies is not None and len(anomalies):
        top = anomalies.iloc[0]
        found.selected = {"kind": "topline", "product": top["product"],
                          "segment": top["segment"], "metric": top["metric"]}
        found.step("auto", f"{counts['topline_anomalies']} top-line anomalies, "
                           f"{counts['feature_alerts']} feature alerts, "
                           f"{counts['new_snapshots']} new snapshots; triaging the most severe "
                           "top-line anomaly", **counts)
        found.follow("anomaly", anomaly=top, scores=seasonal_scores(metrics, data.window.start))
        return
    if len(alerts):
        severity = alerts["severity"].map({s: i for i, s in enumerate(ALERT_SEVERITIES)})
        first = alerts.assign(rank=severity).sort_values(["rank", "ts"]).iloc[0]
        feature = first["feature_name"]
        found.selected = {"kind": "feature_alert", "feature": feature}
        found.step("auto", f"no top-line anomaly; {len(alerts)} feature alerts: triaging the "
                           f"{first['severity']} alert on {feature!r}", **counts)
        found.follow("feature_alert", features=[feature], onsets=None)
        return
    if len(new):
        found.step("auto", f"no top-line anomaly or feature alert; diagnosing {len(new)} new "
                           "snapshots", **counts)
        for snapshot_id in new.sort_values("published_at", ascending=False)["snapshot_id"]:
            found.follow("snapshot", snapshot_id=snapshot_id)
        found.until = ("root_cause_found", "inconclusive")  # newest first, until one is bad
        return
    found.step("auto", "no top-line anomaly, feature alert or new snapshot in the window",
               **counts)
    found.conclude("no_issue")


BRANCHES = (from_topline, topline_to_models, model_to_snapshots, auto)
