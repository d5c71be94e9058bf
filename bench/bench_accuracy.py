"""Triage accuracy on simulated incidents, next to two simple baselines, and triage speed.

Every scenario of :mod:`hawkeye_dagster.simulate` is simulated over several
seeds (``REPORT_SEEDS``; the calibration of confidences uses other seeds, see
``bench/calibrate_triage.py``) and each incident of its ground truth is
triaged from its own entry and window. Reported: top-1 and top-3 root-cause
accuracy (kind and id, and ``version`` for a change), by scenario and over
all; verdict accuracy; root causes named on clean worlds (false root
causes); the calibration of the confidences on these unseen seeds (mean
confidence against the share right, Brier score, over every root cause
named); seconds per triage. The baselines name one root cause each:

- ``largest robust z``: the lineage node (or feature node) whose statistic
  moved most in the window against the week before (median/MAD z);
- ``largest drift``: the input feature of the entry's models whose served
  distribution moved most (two-sample Kolmogorov-Smirnov statistic).

``triage_end_to_end_<scale>`` times one ``incident_report`` materialization
in a fresh Python process (imports and Dagster start-up included); its 60 s
target (180 s on ``medium``) is ``target_s``, not a reference.
Lakes are cached under ``bench/.work/lakes`` (the simulator is deterministic).

``--hard`` measures the harder worlds instead: every scenario of
``HARD_SCENARIOS`` with no factor and with each mess factor of
:data:`~hawkeye_dagster.simulate.factors.FACTORS` (one lake per cell, its
seed drawn from the cell, varied encodings), reported per scenario and per
factor: top-1/top-3, verdict accuracy, false root causes on clean and
external-dip entries, next to a third baseline, ``most recent change``: the
last snapshot publication, lineage change above the entry's models' features
or traffic increase of one of their arms before the onset (an on-call
engineer's first check; given the true onset, so it is, if anything, favoured).

Every lake is written twice, with the simulator's ``varied`` encodings (the
reported figures) and with the ``canonical`` one: ``triage_accuracy_encodings``
counts the incidents whose reports (verdict, ranked root causes with their
confidences, suspects, mitigations) differ between the two, which must be none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.changepoints import pivot_node_stats
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.simulate import FACTORS, SCENARIOS, simulate
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage.tree import run_triage

WORK = Path(__file__).resolve().parent / ".work" / "lakes"
#: seeds reported on: six per single-incident scenario and ``clean``, two ``demo`` lakes
#: (five incidents each): 50 lakes
REPORT_SEEDS = range(6)
DEMO_SEEDS = range(2)
QUICK = (("upstream_corruption", 0), ("clean", 0))
BASELINE_HISTORY = pd.Timedelta("7D")
TARGET_S = {"small": 60.0, "medium": 180.0}
#: the harder worlds' scenarios: two data incidents, a ramp of a worse arm, no incident
HARD_SCENARIOS = ("upstream_corruption", "transform_change", "traffic_ramp", "clean")
#: the scenarios each factor is measured with: where it applies (a ramp before a *data*
#: incident, a weaker incident where there is one) and can mislead (statistics matter to the
#: data incidents, labels to the rollout), two or three lakes a factor to fit a shared machine
_MEASURED = {"none": set(HARD_SCENARIOS),
             "routine_ramp": {"upstream_corruption", "transform_change"},
             "decoy_changes": {"upstream_corruption", "transform_change", "clean"},
             "late_labels": {"upstream_corruption", "traffic_ramp", "clean"},
             "daily_stats": {"upstream_corruption", "transform_change"},
             "mixed_cadence": {"upstream_corruption", "transform_change"},
             "missing_stats": {"upstream_corruption", "transform_change"},
             "external_dip": {"upstream_corruption", "clean"},
             "weak": {"upstream_corruption", "transform_change", "traffic_ramp"}}


ENCODINGS = ("varied", "canonical")
#: the parts of a report compared across encodings
COMPARED = ("verdict", "root_causes", "suspects", "mitigations")


def lake_of(scenario: str, seed: int, scale: str = "small",
            encoding: str = "varied", factors: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """A simulated lake and its ground truth, generated once and cached."""
    lake = WORK / "-".join([scenario, str(seed), scale, encoding, *factors])
    truth = Path(f"{lake}.truth.json")
    if not truth.exists():
        lake.parent.mkdir(parents=True, exist_ok=True)
        simulate(lake, scenario=scenario, seed=seed, scale=scale, encoding=encoding,
                 factors=factors)
    return lake, json.loads(truth.read_text())


def window_of(incident: dict) -> TimeRange:
    return TimeRange.of(incident["window"]["start"], incident["window"]["end"])


def correct(cause: dict, truth: dict | None) -> bool:
    return truth is not None and cause["kind"] == truth["kind"] and cause["id"] == truth["id"] \
        and cause.get("version") == truth.get("version")


def triage_lake(scenario: str, seed: int, encoding: str = "varied",
                factors: tuple[str, ...] = ()) -> list[dict]:
    """Triage every incident of one lake with the project and the baselines."""
    lake, truth = lake_of(scenario, seed, encoding=encoding, factors=factors)
    reader = open_lake(lake=str(lake))
    records = []
    for incident in truth["incidents"]:
        window = window_of(incident)
        start = time.perf_counter()
        report = run_triage(reader, incident["entry"], window)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        z_answer = largest_robust_z(reader, window)
        z_seconds = time.perf_counter() - start
        start = time.perf_counter()
        drift_answer = largest_drift(reader, incident["entry"], window)
        drift_seconds = time.perf_counter() - start
        recent = most_recent_change(reader, incident)
        expected = incident["root_cause"]
        records.append({
            "scenario": scenario, "seed": seed, "encoding": encoding,
            "factor": "+".join(factors) or "none",
            "incident": incident["name"], "report": {k: report[k] for k in COMPARED},
            "truth_verdict": incident["verdict"], "truth": expected,
            "verdict": report["verdict"], "root_causes": report["root_causes"],
            "steps": [s["step"] for s in report["steps"]], "seconds": seconds,
            "top1": bool(report["root_causes"]) and correct(report["root_causes"][0], expected),
            "top3": any(correct(c, expected) for c in report["root_causes"][:3]),
            "z_answer": z_answer, "z_top1": correct(z_answer, expected), "z_seconds": z_seconds,
            "drift_answer": drift_answer, "drift_top1": correct(drift_answer, expected),
            "drift_seconds": drift_seconds,
            "recent_answer": recent, "recent_top1": correct(recent, expected),
        })
    return records


def largest_robust_z(reader: TelemetryReader, window: TimeRange) -> dict:
    """Baseline: the node whose statistic moved most (|median shift| / MAD) in the window."""
    stats = reader.read("lineage_node_stats",
                        time_range=TimeRange(window.start - BASELINE_HISTORY, window.end))
    wide = pivot_node_stats(stats)
    before = wide.loc[wide.index < window.start].to_numpy(float)
    during = wide.loc[wide.index >= window.start].to_numpy(float)
    with np.errstate(all="ignore"):
        centre = np.nanmedian(before, axis=0)
        mad = 1.4826 * np.nanmedian(np.abs(before - centre), axis=0)
        z = np.abs(np.nanmedian(during, axis=0) - centre) / np.fmax(mad, 1e-9)
    node = wide.columns[int(np.nanargmax(np.nan_to_num(z, nan=-1.0)))][0]
    features = reader.read("features")
    named = features.loc[features["lineage_node_id"] == node, "feature_name"]
    return {"kind": "feature", "id": named.iloc[0]} if len(named) else \
        {"kind": "lineage_node", "id": node}


def largest_drift(reader: TelemetryReader, entry: dict, window: TimeRange) -> dict:
    """Baseline: the feature of the entry's models whose served values drifted most (KS)."""
    from scipy import stats

    models = reader.read("models")
    mf = reader.read("model_features")
    if entry["kind"] == "topline":
        keep = models["product"] == entry["product"]
        if entry.get("segment"):
            keep &= models["segment"] == entry["segment"]
        chosen = models.loc[keep, "model_id"].unique()
    elif entry["kind"] == "feature_alert":
        chosen = mf.loc[mf["feature_name"] == entry["feature"], "model_id"].unique()
    elif entry["kind"] == "snapshot":
        snapshots = reader.read("snapshots", equals={"snapshot_id": entry["snapshot"]})
        chosen = snapshots["model_id"].unique()
    else:
        chosen = models["model_id"].unique()
    best = (-1.0, None)
    for model in chosen:  # a handful of models
        features = mf.loc[mf["model_id"] == model].sort_values("position")["feature_name"].tolist()
        rows = reader.serving_samples(model, TimeRange(window.start - BASELINE_HISTORY, window.end),
                                      columns=["ts", *features])
        before = rows.loc[rows["ts"] < window.start, features].to_numpy(float)
        during = rows.loc[rows["ts"] >= window.start, features].to_numpy(float)
        if len(before) < 2 or len(during) < 2:
            continue
        ks = np.atleast_1d(stats.ks_2samp(before, during, axis=0, nan_policy="omit").statistic)
        i = int(np.nanargmax(np.nan_to_num(ks, nan=-1.0)))
        if ks[i] > best[0]:
            best = (float(ks[i]), features[i])
    return {"kind": "feature", "id": best[1]}


def entry_models(reader: TelemetryReader, entry: dict) -> list[str]:
    """The models an entry points at (all of them for ``auto``)."""
    models = reader.read("models")
    if entry["kind"] == "topline":
        keep = models["product"] == entry["product"]
        if entry.get("segment"):
            keep &= models["segment"] == entry["segment"]
        return sorted(models.loc[keep, "model_id"].unique())
    if entry["kind"] == "feature_alert":
        mf = reader.read("model_features")
        return sorted(mf.loc[mf["feature_name"] == entry["feature"], "model_id"].unique())
    if entry["kind"] == "snapshot":
        return sorted(reader.read("snapshots", equals={"snapshot_id": entry["snapshot"]})[
            "model_id"].unique())
    return sorted(models["model_id"].unique())


def most_recent_change(reader: TelemetryReader, incident: dict) -> dict | None:
    """Baseline: the last change before the onset (the window's end without one) among the
    entry's models' snapshot publications, traffic increases of their arms and lineage changes
    above their features."""
    from hawkeye_dagster.analysis.lineage_graph import feature_node, upstream_subgraph
    from hawkeye_dagster.gather.lineage import lineage_from_reader

    models = entry_models(reader, incident["entry"])
    until = pd.Timestamp(incident["onset"] or incident["window"]["end"])
    snapshots = reader.read("snapshots", isin={"model_id": models})
    found = [(t, {"kind": "snapshot", "id": s})
             for t, s in zip(snapshots["published_at"], snapshots["snapshot_id"])]
    arms = reader.read("experiments", isin={"model_id": models}).sort_values(
        ["experiment_id", "segment", "ts"], kind="stable")
    grew = arms.groupby(["experiment_id", "segment"])["traffic_fraction"].diff() > 0
    found += [(t, {"kind": "traffic", "id": e})
              for t, e in zip(arms.loc[grew, "ts"], arms.loc[grew, "experiment_id"])]
    features = reader.read("model_features", isin={"model_id": models})["feature_name"].unique()
    graph = lineage_from_reader(reader)
    above = set(upstream_subgraph(graph, [feature_node(graph, f) for f in features]).nodes)
    changes = reader.read("lineage_changes")
    changes = changes[changes["node_id"].isin(above)]
    found += [(t, {"kind": "lineage_change", "id": n, "version": v})
              for t, n, v in zip(changes["ts"], changes["node_id"], changes["version"])]
    before = [(t, c) for t, c in found if t <= until]
    return max(before, key=lambda tc: (tc[0], json.dumps(tc[1])))[1] if before else None


def hard_cells() -> list[tuple[str, int, tuple[str, ...]]]:
    """(scenario, seed, factors) of the harder worlds: each scenario alone and with the factors
    of :data:`_MEASURED`, one seed per (scenario, factor) from 200 on (apart from the reported
    and calibration seeds)."""
    cells = [(s, f) for f in ("none", *FACTORS) for s in HARD_SCENARIOS]
    return [(s, 200 + i, () if f == "none" else (f,)) for i, (s, f) in enumerate(cells)
            if s in _MEASURED[f]]


def collect_hard(workers: int = 1, simulate_only: bool = False) -> list[dict]:
    """Triage records of every incident of :func:`hard_cells` (lakes simulated on first use;
    with ``simulate_only``, only that)."""
    from concurrent.futures import ProcessPoolExecutor

    cells = hard_cells()
    task = _simulate_cell if simulate_only else triage_lake
    with ProcessPoolExecutor(workers) as pool:
        found = pool.map(task, *zip(*[(s, seed, "varied", f) for s, seed, f in cells]))
        return [r for records in found for r in records]


def _simulate_cell(scenario: str, seed: int, encoding: str, factors: tuple[str, ...]) -> list:
    lake_of(scenario, seed, encoding=encoding, factors=factors)
    return []


def summarize_hard(records: list[dict]) -> dict:
    """:func:`summarize_group` over all, per factor and per scenario."""
    frame = pd.DataFrame(records)
    return {"all": summarize_group(frame),
            **{f"factor:{k}": summarize_group(g) for k, g in frame.groupby("factor")},
            **{f"scenario:{k}": summarize_group(g) for k, g in frame.groupby("scenario")}}


def summarize_group(frame: pd.DataFrame) -> dict:
    """Top-1/top-3 over incidents, verdict accuracy over all entries, false root causes on
    no-issue entries, and the baselines' top-1."""
    incidents = frame[frame["truth_verdict"] == "root_cause_found"]
    clean = frame[frame["truth_verdict"] == "no_issue"]
    params = {"incidents": len(incidents), "no_issue_entries": len(clean),
              "top1": incidents["top1"].mean(), "top3": incidents["top3"].mean(),
              "verdict_accuracy": (frame["verdict"] == frame["truth_verdict"]).mean(),
              "false_root_causes_clean": int((clean["verdict"] == "root_cause_found").sum()),
              "recent_baseline_top1": incidents["recent_top1"].mean(),
              "z_baseline_top1": incidents["z_top1"].mean(),
              "seconds_per_triage": frame["seconds"].mean()}
    return {k: round(float(v), 3) if isinstance(v, float) else v for k, v in params.items()}


def summarize(records: list[dict]) -> dict:
    frame = pd.DataFrame(records)
    incidents = frame[frame["truth_verdict"] == "root_cause_found"]
    clean = frame[frame["truth_verdict"] == "no_issue"]
    params = {
        "lakes": int(frame[["scenario", "seed"]].drop_duplicates().shape[0]),
        "incidents": len(incidents), "no_issue_entries": len(clean),
        "top1": incidents["top1"].mean(), "top3": incidents["top3"].mean(),
        "verdict_accuracy": (frame["verdict"] == frame["truth_verdict"]).mean(),
        "false_root_causes_clean": int((clean["verdict"] == "root_cause_found").sum()),
        "z_baseline_top1": incidents["z_top1"].mean(),
        "drift_baseline_top1": incidents["drift_top1"].mean(),
        "recent_baseline_top1": incidents["recent_top1"].mean(),
    }
    # calibration on seeds it was not fitted on: every root cause named, right or not
    named = [(c["confidence"], correct(c, r.truth)) for r in frame.itertuples()
             for c in r.root_causes]
    if named:
        confidence, right = np.array(named, dtype=float).T
        params["mean_confidence"] = confidence.mean()
        params["share_right"] = right.mean()
        params["brier"] = np.mean((confidence - right) ** 2)
    for name, part in incidents.groupby("incident"):
        params[f"top1_{name}"] = part["top1"].mean()
    return {k: round(float(v), 3) if isinstance(v, float) else v for k, v in params.items()}


def end_to_end(scenario: str, seed: int, scale: str) -> float:
    """Seconds for one triage through Dagster in a fresh process (imports and start-up included)."""
    lake, truth = lake_of(scenario, seed, scale)
    incident = truth["incidents"][0]
    code = (
        "import sys, json, tempfile\n"
        "from hawkeye_dagster.definitions import build_defs\n"
        "from hawkeye_dagster.assets.triage import materialize_incident\n"
        "from hawkeye_dagster.incidents import Incident\n"
        "from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource\n"
        "lake, entry, start, end = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]\n"
        "with tempfile.TemporaryDirectory() as root:\n"
        "    defs = build_defs({'telemetry': TelemetrySource(lake=lake),\n"
        "                       'storage': HawkeyeStorage(root=root)})\n"
        "    materialize_incident(defs, Incident(entry, start, end))\n")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(lake), json.dumps(incident["entry"]),
                    incident["window"]["start"], incident["window"]["end"]], check=True)
    return time.perf_counter() - start


def report_lakes(quick: bool) -> list[tuple[str, int]]:
    """(scenario, seed) of the lakes reported on."""
    if quick:
        return list(QUICK)
    return [(s, seed) for s in SCENARIOS
            for seed in (DEMO_SEEDS if s == "demo" else REPORT_SEEDS)]


def collect(quick: bool, encoding: str = "varied") -> list[dict]:
    """Triage records of every incident of the reported lakes."""
    return [r for scenario, seed in report_lakes(quick)
            for r in triage_lake(scenario, seed, encoding)]


def encoding_differences(varied: list[dict], canonical: list[dict]) -> list[str]:
    """The incidents whose reports differ between the two encodings of their lake."""
    return [f"{a['scenario']}-{a['seed']}:{a['incident']}" for a, b in zip(varied, canonical)
            if (a["scenario"], a["seed"], a["incident"]) != (b["scenario"], b["seed"], b["incident"])
            or json.dumps(a["report"], sort_keys=True) != json.dumps(b["report"], sort_keys=True)]


def run(quick: bool) -> list[dict]:
    records = collect(quick)
    canonical = collect(quick, "canonical")
    params = summarize(records)
    differ = encoding_differences(records, canonical)
    frame = pd.DataFrame(records)
    mean = frame["seconds"].mean()
    results = [
        {"name": "triage_accuracy_vs_robust_z", "project_s": mean,
         "reference": "largest robust z node/feature", "reference_s": frame["z_seconds"].mean(),
         "ratio": frame["z_seconds"].mean() / mean, "params": params},
        {"name": "triage_accuracy_vs_drift", "project_s": mean,
         "reference": "largest feature drift (KS)", "reference_s": frame["drift_seconds"].mean(),
         "ratio": frame["drift_seconds"].mean() / mean,
         "params": {k: params[k] for k in ("incidents", "top1", "drift_baseline_top1")}},
        {"name": "triage_accuracy_encodings", "project_s": mean,
         "reference": "the same lakes, canonical encoding",
         "reference_s": pd.DataFrame(canonical)["seconds"].mean(), "ratio": None,
         "params": {"incidents": len(records), "reports_differing": len(differ),
                    "differing": ", ".join(differ[:5]), "top1_varied": params["top1"],
                    "top1_canonical": summarize(canonical)["top1"]}},
    ]
    for scale in ("small",) if quick else ("small", "medium"):
        seconds = end_to_end("upstream_corruption", 0, scale)
        results.append({"name": f"triage_end_to_end_{scale}", "project_s": seconds,
                        "reference": "none (a target, not a comparison)", "reference_s": None,
                        "ratio": None, "target_s": TARGET_S[scale],
                        "params": {"scenario": "upstream_corruption", "scale": scale}})
    return results


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Triage accuracy records and their summary.")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--encoding", choices=ENCODINGS, default="varied")
    parser.add_argument("--hard", action="store_true",
                        help="the harder worlds: scenarios x mess factors (see hard_cells)")
    parser.add_argument("--workers", type=int, default=1, help="lakes triaged at once (--hard)")
    parser.add_argument("--simulate-only", action="store_true",
                        help="with --hard: write the lakes, triage nothing")
    parser.add_argument("--records", help="write every triage's record to this JSON file")
    args = parser.parse_args()
    if args.simulate_only:
        collect_hard(args.workers, simulate_only=True)
        raise SystemExit(0)
    found = collect_hard(args.workers) if args.hard else collect(args.quick, args.encoding)
    if args.records:
        Path(args.records).write_text(json.dumps(found, indent=1, default=str))
    print(json.dumps(summarize_hard(found) if args.hard else summarize(found), indent=1))
