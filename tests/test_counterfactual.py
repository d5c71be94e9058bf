"""Counterfactual confirmation on simulated lakes with real exported snapshots.

The pure measurement (:mod:`hawkeye_dagster.analysis.counterfactual`) is fed
the logged served rows of a simulated model around its incident's onset: the
true cause's features repair most of the degradation, other features
nothing; a clean world has nothing to explain; in a compound incident
injected here into clean rows, where each part's effect is known exactly
(the same rows scored with only the other part injected), each repair
explains its part and the interval covers it. The triage carries the
measurement into every root cause of the report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hawkeye_dagster.analysis.counterfactual import Candidate, ServedRows, counterfactuals
from hawkeye_dagster.analysis.model_isolation import row_loss
from hawkeye_dagster.analysis.program_batches import run_program
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.snapshot_io import load_artifact
from hawkeye_dagster.time_range import TimeRange
from hawkeye_dagster.triage.report import validate_report
from hawkeye_dagster.triage.summary import format_report, report_markdown
from hawkeye_dagster.triage.tree import run_triage


def served(lake, model_id: str, onset: pd.Timestamp, end: pd.Timestamp):
    """(window rows, pre-onset rows, their features, models, task) of one model."""
    reader = open_lake(lake=str(lake))
    rows = reader.read("serving_samples", equals={"model_id": model_id},
                       time_range=TimeRange(onset - pd.Timedelta("7D"), end))
    features = reader.read("model_features", equals={"model_id": model_id}) \
        .sort_values("position")["feature_name"].tolist()
    snapshots = reader.read("snapshots", equals={"model_id": model_id}).set_index("snapshot_id")
    ids = sorted(rows["snapshot_id"].unique())
    code = {s: i for i, s in enumerate(ids)}
    models = [load_artifact(reader, snapshots.loc[s, "artifact"], snapshot_id=s).module()
              for s in ids]
    task = reader.read("models", equals={"model_id": model_id})["task"].iloc[0]

    def as_rows(part: pd.DataFrame) -> ServedRows:
        return ServedRows(part[features].to_numpy(np.float32, na_value=np.nan),
                          part["prediction"].to_numpy(float),
                          part["label"].to_numpy(float, na_value=np.nan),
                          part["snapshot_id"].map(code).to_numpy(), part["ts"].to_numpy())

    after = rows["ts"] >= onset
    return as_rows(rows[after]), as_rows(rows[~after]), features, models, task


def feature_candidates(features: list[str], true: list[str]) -> list[Candidate]:
    """The true cause's features, and as decoys the model's other features in two groups."""
    others = [i for i, f in enumerate(features) if f not in true]
    return [Candidate("lineage_node", "true", "true features",
                      tuple(features.index(f) for f in true)),
            Candidate("feature", "decoy-a", "one other feature", tuple(others[:1])),
            Candidate("feature", "decoy-b", "other features", tuple(others[1::2]))]


@pytest.mark.parametrize("scenario", ["upstream_corruption", "transform_change"])
def test_true_cause_explains_most_and_decoys_little(simulated, scenario):
    lake, truth = simulated(scenario)
    [incident] = truth["incidents"]
    model_id = incident["suspects"]["models"][0]
    window, reference, features, models, task = served(
        lake, model_id, pd.Timestamp(incident["onset"]), pd.Timestamp(incident["window"]["end"]))
    true, *decoys = counterfactuals(window, reference,
                                    feature_candidates(features, incident["suspects"]["features"]),
                                    models, task)
    assert true.degraded and true.metric in ("log_loss", "squared_error")
    assert true.observed > true.pre_onset
    assert true.explained_share >= 0.5, true
    assert true.interval[0] <= true.explained_share <= true.interval[1]
    for decoy in decoys:
        assert decoy.explained_share < 0.2, decoy
    assert set(true.timeline.columns) == {"ts", "observed", "repaired"}


def test_clean_world_gives_no_large_share(simulated):
    lake, truth = simulated("clean")
    model_id = "feed_ranker"
    end = pd.Timestamp(truth["end"])
    window, reference, features, models, task = served(lake, model_id, end - pd.Timedelta("3D"),
                                                       end)
    half = len(features) // 2
    candidates = [Candidate("feature", "first half", "", tuple(range(half))),
                  Candidate("feature", "second half", "", tuple(range(half, len(features)))),
                  Candidate("snapshot", "rollback", "", rescore={0: len(models) - 1})]
    for result in counterfactuals(window, reference, candidates, models, task):
        assert result.explained_share < 0.5, result


def test_each_part_of_a_compound_incident_explains_its_part(simulated):
    """Two causes injected into the clean world's later rows, each scaling a group of
    features (a unit change) on its own half of the rows (two segments' pipelines broke);
    the groups split the features so that each alone raises the loss about as much (greedy
    on each feature's own effect). The known effect of repairing A is the loss the rows
    have with only B injected, scored by the same snapshot."""
    lake, truth = simulated("clean")
    end = pd.Timestamp(truth["end"])
    window, reference, features, models, task = served(lake, "feed_ranker",
                                                       end - pd.Timedelta("3D"), end)
    x = window.inputs

    def predict(inputs: np.ndarray) -> np.ndarray:
        out = np.empty(len(inputs))
        for m, module in enumerate(models):
            rows = window.model == m
            with torch.no_grad():
                out[rows] = run_program(module, torch.from_numpy(inputs[rows])).reshape(-1).numpy()
        return out

    def loss(prediction: np.ndarray) -> float:
        return float(np.nanmean(row_loss(prediction, window.label, task)))

    half = np.random.default_rng(0).random(len(x)) < 0.5

    def inject(columns, rows=None) -> np.ndarray:
        bad = x.copy()
        rows = np.ones(len(x), bool) if rows is None else rows
        bad[np.ix_(rows, list(columns))] *= 3.0
        return bad

    clean = loss(predict(x))
    effect = [loss(predict(inject([j]))) - clean for j in range(len(features))]
    groups: tuple[list[int], list[int]] = ([], [])
    for j in np.argsort(effect)[::-1]:
        min(groups, key=lambda g: sum(effect[i] for i in g)).append(int(j))
    a, b = tuple(groups[0]), tuple(groups[1])
    only_a, only_b = inject(a, half), inject(b, ~half)
    corrupted = only_a.copy()
    corrupted[~half] = only_b[~half]

    both = ServedRows(corrupted, predict(corrupted), window.label, window.model, window.ts)
    repair_a = Candidate("feature", "a", "", a)
    repair_b = Candidate("feature", "b", "", b)
    result_a, result_b = counterfactuals(both, reference, [repair_a, repair_b], models, task)

    rise = loss(both.prediction) - result_a.pre_onset
    known_a = (loss(both.prediction) - loss(predict(only_b))) / rise
    known_b = (loss(both.prediction) - loss(predict(only_a))) / rise
    assert result_a.degraded and 0.1 < known_a < 0.9 and 0.1 < known_b < 0.9
    for result, known in ((result_a, known_a), (result_b, known_b)):
        assert result.interval[0] <= known <= result.interval[1], (result, known)
    assert abs(result_a.explained_share - known_a) < 0.2
    assert abs(result_b.explained_share - known_b) < 0.2


def test_every_root_cause_of_a_report_carries_its_share(simulated):
    lake, truth = simulated("upstream_corruption")
    [incident] = truth["incidents"]
    report = run_triage(open_lake(lake=str(lake)), incident["entry"],
                        TimeRange.of(incident["window"]["start"], incident["window"]["end"]))
    validate_report(report)
    assert report["root_causes"]
    for cause in report["root_causes"]:
        measured = cause["counterfactual"]
        assert 0.0 <= cause["explained_share"] <= 1.0
        assert measured["metric"] == "log_loss" and measured["observed"] > measured["pre_onset"]
        low, high = measured["interval"]
        assert low <= cause["explained_share"] <= high
        assert cause["summary"].startswith("repairing it removes ")
    top = report["root_causes"][0]
    assert top["id"] == incident["root_cause"]["id"] and top["explained_share"] >= 0.5
    assert any(s["step"] == "counterfactual" for s in report["steps"])
    assert f"explains {top['explained_share']:.0%}" in format_report(report)
    assert "| explains |" in report_markdown(report)


def measured(share: float, interval: tuple[float, float], degraded: bool = True):
    from hawkeye_dagster.analysis.counterfactual import Counterfactual

    timeline = pd.DataFrame({"ts": pd.date_range("2026-10-10", periods=3, freq="6h", tz="UTC"),
                             "observed": [0.6, 0.62, 0.61], "repaired": [0.5, 0.52, 0.5]})
    return Counterfactual(Candidate("lineage_node", "raw.clicks", "features mapped", (0,)),
                          "log_loss", 0.61, 0.61 - share * 0.1, 0.51, share, interval, degraded,
                          timeline)


@pytest.mark.parametrize("share, interval, elsewhere, demoted", [
    (0.02, (0.0, 0.08), True, True),
    (0.02, (0.0, 0.08), False, False),  # no repair explains it: the repairs are in doubt
    (0.6, (0.4, 0.8), True, False),
])
def test_a_repair_that_explains_almost_nothing_demotes_its_cause_when_another_explains_it(
        share, interval, elsewhere, demoted):
    from hawkeye_dagster.triage.confirm import record

    cause = {"kind": "lineage_node", "id": "raw.clicks", "confidence": 0.9,
             "summary": "null fraction rose"}
    record(cause, measured(share, interval), "ads_ctr", pd.Timestamp("2026-10-10", tz="UTC"),
           explained_elsewhere=elsewhere)
    assert cause["summary"].startswith(f"repairing it removes {share:.0%}")
    assert cause["summary"].endswith("; null fraction rose")
    assert ("demoted" in cause["summary"]) == demoted
    assert (cause["confidence"] < 0.9) == demoted
    assert cause["counterfactual"]["interval"] == list(interval)


def test_each_root_cause_gets_a_counterfactual_plot():
    from hawkeye_dagster.triage.plots import report_plots
    from hawkeye_dagster.triage.evidence import Evidence

    plots = report_plots(Evidence(counterfactuals=[measured(0.6, (0.4, 0.8))]))
    assert list(plots) == ["Counterfactual of lineage_node raw.clicks"]
    assert plots["Counterfactual of lineage_node raw.clicks"].startswith(b"\x89PNG")
