"""Counterfactual confirmation: its cost within a triage, and how well its shares separate
the true root cause from the wrong candidates.

Every incident scenario of the simulator over ``SEEDS`` (one seed with
``--quick``) is triaged from its ground truth's entry and window, as
``bench_accuracy`` does, with the time spent in
:func:`~hawkeye_dagster.triage.confirm.confirm_root_causes` measured inside
the same run (so both figures meet the same load):

- ``counterfactual_overhead``: ratio = triage seconds without the
  counterfactual re-runs / with them (target >= 0.5: at most twice the time);
- ``counterfactual_accuracy``: the share of incidents whose true root cause
  is among the measured candidates with ``explained_share >= 0.5`` (target
  >= 90%), and the share of wrong candidates with ``explained_share < 0.2``
  (target >= 90%). A wrong candidate is neither the true cause nor a node or
  feature on its lineage path (the truth's suspect lineage nodes and
  features): repairing a node downstream of the bad data repairs it too.
  Candidates are read from the report's ``counterfactual`` step, so those a
  weak verdict leaves out of ``root_causes`` count as well; the clean world's
  largest share is reported beside them.
"""

from __future__ import annotations

import time

import pandas as pd

from bench.bench_accuracy import lake_of, window_of
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.triage import tree

SCENARIOS = ("upstream_corruption", "transform_change", "feature_alert_early",
             "bad_training_partition", "exploding_training", "nan_snapshot", "traffic_ramp",
             "clean")
SEEDS = range(3)
TRUE_SHARE, WRONG_SHARE = 0.5, 0.2


def triage_timed(reader, incident: dict) -> tuple[dict, float, float]:
    """The report, the triage's seconds and the seconds spent on counterfactuals in it."""
    spent = []
    measure = tree.confirm_root_causes

    def timed(run):
        start = time.perf_counter()
        try:
            return measure(run)
        finally:
            spent.append(time.perf_counter() - start)

    tree.confirm_root_causes = timed
    try:
        start = time.perf_counter()
        report = tree.run_triage(reader, incident["entry"], window_of(incident))
        return report, time.perf_counter() - start, sum(spent)
    finally:
        tree.confirm_root_causes = measure


def is_cause(candidate: dict, truth: dict | None) -> bool:
    """The candidate is the true cause (kind and id: a change's version is the report's)."""
    return truth is not None and (candidate["kind"], candidate["id"]) == (truth["kind"],
                                                                        truth["id"])


def candidates(report: dict) -> list[dict]:
    steps = [s for s in report["steps"] if s["step"] == "counterfactual"]
    return steps[0]["evidence"]["counterfactuals"] if steps else []


def collect(quick: bool) -> list[dict]:
    records = []
    for scenario in SCENARIOS:
        for seed in SEEDS[:1] if quick else SEEDS:
            lake, truth = lake_of(scenario, seed)
            reader = open_lake(lake=str(lake))
            for incident in truth["incidents"]:
                report, seconds, spent = triage_timed(reader, incident)
                expected = incident["root_cause"]
                path = set(incident["suspects"]["lineage_nodes"]) \
                    | {f"feat:{f}" for f in incident["suspects"]["features"]} \
                    | set(incident["suspects"]["features"])
                for c in candidates(report):
                    role = ("true" if is_cause(c, expected) else
                            "path" if expected is not None and c["id"] in path else "wrong")
                    records.append({"scenario": scenario, "seed": seed, "role": role,
                                    "kind": c["kind"], "id": c["id"],
                                    "share": c["explained_share"]})
                records.append({"scenario": scenario, "seed": seed, "role": "incident",
                                "seconds": seconds, "counterfactual_s": spent,
                                "has_truth": expected is not None})
    return records


def summarize(records: list[dict]) -> dict:
    frame = pd.DataFrame(records)
    incidents = frame[frame["role"] == "incident"]
    real = incidents[incidents["has_truth"]]
    true = frame[frame["role"] == "true"].groupby(["scenario", "seed"])["share"].max()
    wrong = frame[(frame["role"] == "wrong") & (frame["scenario"] != "clean")]
    clean = frame[(frame["scenario"] == "clean") & frame["share"].notna()]
    hits = true.reindex(pd.MultiIndex.from_frame(real[["scenario", "seed"]]), fill_value=0.0)
    by_scenario = (hits >= TRUE_SHARE).groupby(level=0).mean().round(2).to_dict()
    return {
        "incidents": len(real), "true_share_ge_0.5": round(float((hits >= TRUE_SHARE).mean()), 3),
        "true_share_median": round(float(hits.median()), 3),
        "true_share_ge_0.5_by_scenario": by_scenario,
        "wrong_candidates": len(wrong),
        "wrong_share_lt_0.2": round(float((wrong["share"] < WRONG_SHARE).mean()), 3)
        if len(wrong) else None,
        "clean_max_share": round(float(clean["share"].max()), 3) if len(clean) else 0.0,
    }


def run(quick: bool) -> list[dict]:
    records = collect(quick)
    incidents = pd.DataFrame([r for r in records if r["role"] == "incident"])
    with_s = float(incidents["seconds"].mean())
    without_s = float((incidents["seconds"] - incidents["counterfactual_s"]).mean())
    summary = summarize(records)
    return [
        {"name": "counterfactual_overhead", "project_s": with_s,
         "reference": "the same triage without counterfactual re-runs", "reference_s": without_s,
         "ratio": without_s / with_s, "target_ratio": 0.5,
         "params": {"incidents": len(incidents),
                    "counterfactual_s": float(incidents["counterfactual_s"].mean())}},
        {"name": "counterfactual_accuracy", "project_s": with_s, "reference": None,
         "reference_s": None, "ratio": None, "params": summary},
    ]


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args().quick), indent=1, default=str))
