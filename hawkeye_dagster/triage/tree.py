"""HawkEye's decision tree: from an entry point down to ranked root causes.

top-line anomaly -> models whose prediction quality fell with it -> that
model's snapshots -> either a suspect snapshot (diagnosed: numerics, weights,
training run and partitions, or a traffic change of its arm), or all
snapshots degraded alike -> the features that moved -> their upstream
lineage. A feature alert enters at the features, a snapshot publication at
the snapshot diagnosis, and ``auto`` finds the incidents in the window and
triages the most severe. Every step records its finding, evidence and
confidence in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from hawkeye_dagster.analysis.model_isolation import bucket_quality, rank_models
from hawkeye_dagster.analysis.rollout import RolloutFinding, isolate_snapshots
from hawkeye_dagster.analysis.topline import (ToplineScores, detect_topline_anomalies,
                                              seasonal_scores)
from hawkeye_dagster.lake.reader import TelemetryReader, TimeRange
from hawkeye_dagster.triage import calibration, feature_branch, snapshot_branch
from hawkeye_dagster.triage.confirm import confirm_root_causes
from hawkeye_dagster.triage.data import TriageData
from hawkeye_dagster.triage.entry import check_entry, entry_features, entry_onsets, resolve_window
from hawkeye_dagster.triage.report import ReportBuilder, iso

Progress = Callable[[str], None]
#: a root cause whose calibrated confidence is below this is not "found"
MIN_CONFIDENCE = 0.5
#: alert severities that open an incident in ``auto`` mode
ALERT_SEVERITIES = ("critical", "warning")
#: a top-line excursion whose median robust z is below this is within what like hours vary by
#: (the 3-sigma control limit): weak root causes then mean nothing is significant, not
#: conflicting evidence
SIGNIFICANT_SHIFT_Z = 3.0


@dataclass
class Evidence:
    """What the report's plots need beyond the JSON report."""

    topline: ToplineScores | None = None
    #: (product, segment, metric) of the degraded series
    series: tuple[str, str, str] | None = None
    onset: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    model_id: str | None = None
    #: the suspect model's quality per bucket and snapshot
    quality: pd.DataFrame | None = None
    rollout: RolloutFinding | None = None
    #: the ranked features (the features step's frame)
    features: pd.DataFrame | None = None
    #: lineage path from the root cause down to a feature
    lineage_path: list[str] = field(default_factory=list)
    #: each root cause's counterfactual re-run (:mod:`hawkeye_dagster.triage.confirm`)
    counterfactuals: list = field(default_factory=list)


@dataclass
class TriageResult:
    report: dict
    evidence: Evidence


def run_triage(reader: TelemetryReader, entry: dict, window: TimeRange | None = None,
               progress: Progress | None = None) -> dict:
    """Run the decision tree and return the root-cause report (contract section 5).

    ``entry`` is the report's entry object (see :mod:`hawkeye_dagster.triage.entry`);
    ``window`` may be ``None`` or open-ended (defaults of
    :func:`~hawkeye_dagster.triage.entry.resolve_window`). Raises
    :class:`~hawkeye_dagster.errors.UnknownIdError` for ids the lake lacks and
    :class:`~hawkeye_dagster.errors.ContractError` for broken tables.
    """
    return triage(reader, entry, window, progress).report


def triage(reader: TelemetryReader, entry: dict, window: TimeRange | None = None,
           progress: Progress | None = None) -> TriageResult:
    """:func:`run_triage`, with the evidence behind the report's plots."""
    window = resolve_window(reader, *((window.start, window.end) if window else ()))
    check_entry(reader, entry)
    builder = ReportBuilder(entry={**entry, "window": {"start": window.start, "end": window.end}})
    run = TriageRun(TriageData(reader, window), builder, Evidence(), progress or (lambda _: None))
    verdict = run.start(entry)
    confirm_root_causes(run)
    best = max((c["confidence"] for c in builder.root_causes), default=None)
    if best is not None and best >= MIN_CONFIDENCE:
        verdict = "root_cause_found"
    elif best is not None and run.degraded:
        verdict = "inconclusive"
        builder.step("verdict", f"the best root cause has confidence {best:.2f}, below "
                                f"{MIN_CONFIDENCE}: evidence is too weak or conflicting")
    elif best is not None:
        verdict = "no_issue"
        builder.step("verdict", f"nothing degraded, and the best candidate has confidence "
                                f"{best:.2f}, below {MIN_CONFIDENCE}: nothing significant")
    elif verdict == "inconclusive" and not run.degraded:
        verdict = "no_issue"
        builder.step("verdict", "no root cause, under a top-line excursion below "
                                f"{SIGNIFICANT_SHIFT_Z:g} robust sigmas: nothing significant")
    return TriageResult(builder.build(verdict), run.evidence)


@dataclass
class TriageRun:
    """One triage in progress: what it reads, the report it builds, the evidence for plots."""

    data: TriageData
    report: ReportBuilder
    evidence: Evidence
    progress: Progress
    #: whether the tree found something wrong (a degraded top line, model or snapshot): then
    #: weak root causes leave the triage ``inconclusive``; otherwise nothing is significant
    degraded: bool = True

    def start(self, entry: dict) -> str:
        if entry["kind"] == "topline":
            return self.from_topline(entry["product"], entry.get("segment"))
        if entry["kind"] == "feature_alert":
            return feature_branch.from_feature_alert(self, entry_features(entry),
                                                     entry_onsets(entry))
        if entry["kind"] == "snapshot":
            return snapshot_branch.from_snapshot(self, entry["snapshot"])
        return self.auto()

    # --- top line -> models -> snapshots ------------------------------------------------

    def from_topline(self, product: str | None, segment: str | None) -> str:
        self.progress(f"top line: scanning {product or 'all products'}"
                      f"{'/' + segment if segment else ''}")
        metrics = self.data.topline(product, segment)
        anomalies = detect_topline_anomalies(metrics, self.data.window) if len(metrics) else None
        where = "/".join(x for x in (product, segment) if x) or "any product"
        if anomalies is None or anomalies.empty:
            self.report.step("topline", f"no top-line metric of {where} degraded significantly "
                                        "in the window")
            return "no_issue"
        return self.isolate(anomalies.iloc[0], seasonal_scores(metrics, self.data.window.start))

    def isolate(self, anomaly: pd.Series, scores: ToplineScores) -> str:
        """Follow one top-line anomaly down the tree."""
        series = (anomaly["product"], anomaly["segment"], anomaly["metric"])
        onset, end = anomaly["onset"], anomaly["end"]
        self.degraded = bool(anomaly["shift_z"] >= SIGNIFICANT_SHIFT_Z)
        self.evidence.topline, self.evidence.series = scores, series
        self.evidence.onset, self.evidence.end = onset, end
        self.report.step(
            "topline",
            f"{anomaly['metric']} of {anomaly['product']}/{anomaly['segment']} "
            f"{'fell' if anomaly['relative_change'] < 0 else 'rose'} by "
            f"{abs(anomaly['relative_change']):.1%} from {iso(onset)} "
            f"(robust z {anomaly['shift_z']:.1f} against like hours)",
            confidence=calibration.topline_confidence(anomaly["score"]),
            product=series[0], segment=series[1], metric=series[2], onset=onset, end=end,
            relative_change=anomaly["relative_change"], shift_z=anomaly["shift_z"],
            score=anomaly["score"])
        ranking = self.rank_models(series, scores, onset, end)
        suspects = ranking[ranking["suspect"]]
        self.report.suspect("models", suspects["model_id"])
        if suspects.empty:  # e.g. fewer requests: volume and metric fell with models unchanged
            self.report.step("topline_to_models",
                             "no serving model's prediction quality degraded with the top line: "
                             "the cause lies outside the models, nothing in them is significant",
                             models=ranking.to_dict("records"))
            return "no_issue"
        top = suspects.iloc[0]
        self.report.step(
            "topline_to_models",
            f"model {top['model_id']} ({top['traffic_share']:.0%} of the segment's traffic) "
            f"degraded with the top line: loss {top['loss_before']:.3g} -> {top['loss_after']:.3g}"
            f", degradation z {top['degradation_z']:.1f}, correlation {top['correlation']:.2f}",
            confidence=calibration.model_confidence(top["degradation_z"], top["correlation"]),
            models=ranking.to_dict("records"))
        return self.model_to_snapshots(top["model_id"], series[1], onset, end, scores.z.index)

    def rank_models(self, series, scores: ToplineScores, onset, end) -> pd.DataFrame:
        product, segment, _ = series
        models = self.data.models
        serving = models[(models["product"] == product) & (models["segment"] == segment)]
        self.progress(f"models: scoring {len(serving)} models serving {product}/{segment}")
        qualities = {m: bucket_quality(self.data.quality_samples(m, segment), t, scores.bucket)
                     for m, t in zip(serving["model_id"], serving["task"])}
        tasks = dict(zip(serving["model_id"], serving["task"]))
        return rank_models(scores.z[series], onset, end, qualities, tasks)

    def model_to_snapshots(self, model_id: str, segment: str, onset, end,
                           grid: pd.DatetimeIndex) -> str:
        self.progress(f"snapshots: comparing the snapshots of {model_id} in {segment}")
        quality = bucket_quality(self.data.quality_samples(model_id, segment),
                                 self.data.task(model_id), pd.Timedelta(grid.freq),
                                 by=["snapshot_id"])
        finding = isolate_snapshots(quality, self.data.experiments(model_id, segment), grid,
                                    onset, end)
        self.evidence.model_id, self.evidence.quality, self.evidence.rollout = \
            model_id, quality, finding
        evidence = {"snapshots": finding.snapshots.to_dict("records"),
                    "traffic_changes": finding.traffic_changes.to_dict("records")}
        if finding.verdict == "snapshot":
            self.report.suspect("snapshots", finding.suspects)
            lead = finding.snapshots.set_index("snapshot_id").loc[finding.suspects[0]]
            text = (f"snapshot {finding.suspects[0]} of {model_id} carries its degradation: "
                    f"{lead['contribution']:.3g} of the model's loss rise {finding.delta:.3g} "
                    f"(loss {lead['loss_during']:.3g}; against its peers on the same hours, "
                    f"peer z {lead['peer_z']:.1f})")
            if finding.traffic_experiment:
                self.report.suspect("experiments", [finding.traffic_experiment])
                text += (f"; it already served before the onset and its arm "
                         f"{finding.traffic_experiment} grew from {lead['share_before']:.0%} to "
                         f"{lead['share_during']:.0%} of the traffic")
            self.report.step("model_to_snapshots", text,
                             confidence=calibration.snapshot_confidence(lead["peer_z"]), **evidence)
            return snapshot_branch.suspect_snapshot(self, model_id, finding)
        if finding.verdict == "all_snapshots":
            text = (f"every snapshot of {model_id} serving since {iso(onset)} degraded alike: "
                    "the snapshots are not the cause, the features are the suspects")
        else:
            text = (f"the rollout of {model_id} explains nothing (no snapshot worse than its peers,"
                    " none newly arrived): looking at the features")
        self.report.step("model_to_snapshots", text, **evidence)
        return feature_branch.from_model(self, model_id, onset, end)

    # --- auto ---------------------------------------------------------------------------

    def auto(self) -> str:
        """Find the incidents in the window and triage the most severe one."""
        metrics = self.data.topline()
        anomalies = detect_topline_anomalies(metrics, self.data.window) if len(metrics) else None
        alerts = self.data.table("feature_alerts", time_range=self.data.window)
        alerts = alerts[alerts["severity"].isin(ALERT_SEVERITIES)]
        published = self.data.snapshots
        new = published[(published["published_at"] >= self.data.window.start)
                         & (published["published_at"] < self.data.window.end)]
        found = {"topline_anomalies": 0 if anomalies is None else len(anomalies),
                 "feature_alerts": len(alerts), "new_snapshots": len(new)}
        if anomalies is not None and len(anomalies):
            top = anomalies.iloc[0]
            self.report.entry["selected"] = {"kind": "topline", "product": top["product"],
                                             "segment": top["segment"], "metric": top["metric"]}
            self.report.step("auto", f"{found['topline_anomalies']} top-line anomalies, "
                                     f"{found['feature_alerts']} feature alerts, "
                                     f"{found['new_snapshots']} new snapshots; triaging the most "
                                     f"severe top-line anomaly", **found)
            return self.isolate(top, seasonal_scores(metrics, self.data.window.start))
        if len(alerts):
            severity = alerts["severity"].map({s: i for i, s in enumerate(ALERT_SEVERITIES)})
            first = alerts.assign(rank=severity).sort_values(["rank", "ts"]).iloc[0]
            features = [first["feature_name"]]
            self.report.entry["selected"] = {"kind": "feature_alert", "feature": features[0]}
            self.report.step("auto", f"no top-line anomaly; {len(alerts)} feature alerts: "
                                     f"triaging the {first['severity']} alert on "
                                     f"{features[0]!r}", **found)
            return feature_branch.from_feature_alert(self, features)
        if len(new):
            self.report.step("auto", f"no top-line anomaly or feature alert; diagnosing "
                                     f"{len(new)} new snapshots", **found)
            return snapshot_branch.from_new_snapshots(self, new)
        self.report.step("auto", "no top-line anomaly, feature alert or new snapshot in the "
                                 "window", **found)
        return "no_issue"
