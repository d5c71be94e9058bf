"""The ranked feature list: synthetic evidence, then simulated lakes with known incidents."""

import numpy as np
import pandas as pd
import pytest
import torch

from feature_world import FEATURES, START, serving, serving_model
from hawkeye_dagster.analysis.ablation import ablation_attributions, contribution_shift
from hawkeye_dagster.analysis.feature_isolation import isolate_features
from hawkeye_dagster.analysis.feature_ranking import RANKING_COLUMNS, combine_evidence
from hawkeye_dagster.analysis.feature_stats import PREDICTION, hourly_stats, reference_profile
from hawkeye_dagster.gather.feature_ranking import rank_features
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.time_range import TimeRange

ONSET = START + pd.Timedelta("7D 14h")
END = START + pd.Timedelta("8D")


def _evidence(incidents, with_ablation=True):
    frame = serving(days=8, per_hour=300, seed=5, incidents=incidents)
    columns = [*FEATURES, PREDICTION]
    reference = reference_profile(frame[frame["ts"] < START + pd.Timedelta("3D")], columns)
    isolation = isolate_features(hourly_stats(frame, columns, reference.edges), reference,
                                 TimeRange(ONSET - pd.Timedelta("2h"), END))
    if not with_ablation:
        return combine_evidence(isolation)
    model = serving_model()
    baselines = torch.tensor(np.nan_to_num(reference.stats.pooled().mean[:len(FEATURES)]),
                             dtype=torch.float32)
    window = frame[frame["ts"] >= ONSET].sample(2000, random_state=0)
    before = frame[(frame["ts"] < ONSET) & (frame["ts"].dt.hour >= ONSET.hour)]  # f0 cycles daily
    before = before.sample(2000, random_state=0)
    attr = [ablation_attributions(model, torch.tensor(part[FEATURES].to_numpy(np.float32)),
                                  baselines) for part in (window, before)]
    return combine_evidence(isolation, contribution_shift(*attr, FEATURES))


def _nulls(x):
    return np.full_like(x, np.nan)


def test_ablation_separates_the_feature_that_matters_from_one_that_merely_moved():
    ranking = _evidence({2: (ONSET, lambda x: x + 1.5), 7: (ONSET, _nulls)})
    assert list(ranking.columns) == list(RANKING_COLUMNS)
    assert ranking.attrs["explained"]
    assert ranking.loc[ranking["significant"], "feature"].tolist() == ["f2"]
    top = ranking.iloc[0]
    # the sigmoid couples features: f2's shift also changes what the others contribute, less so
    assert top["feature"] == "f2" and abs(top["share"]) > 3 * ranking["share"].abs().iloc[1:].max()
    assert abs(top["onset"] - ONSET) <= pd.Timedelta("1h")
    assert "accounts for" in top["reasons"] and "since" in top["reasons"]
    # without a snapshot both moved features are suspects: correlation cannot tell them apart
    alone = _evidence({2: (ONSET, lambda x: x + 1.5), 7: (ONSET, _nulls)}, with_ablation=False)
    assert set(alone.loc[alone["significant"], "feature"]) == {"f2", "f7"}


def test_a_clean_world_has_nothing_to_explain():
    ranking = _evidence({})
    assert not ranking.attrs["explained"] and not ranking["significant"].any()
    assert "did not shift" in ranking.attrs["summary"]


@pytest.mark.parametrize("scenario", ["upstream_corruption", "transform_change"])
def test_simulated_incidents_rank_the_corrupted_features_first(simulated, scenario):
    lake, truth = simulated(scenario)
    incident = truth["incidents"][0]
    onset = pd.Timestamp(incident["onset"])
    model = incident["suspects"]["models"][0]
    ranking = rank_features(open_lake(lake=str(lake)), model, onset=onset,
                            end=pd.Timestamp(incident["window"]["end"]))
    expected = set(incident["suspects"]["features"])
    significant = ranking[ranking["significant"]]
    assert ranking.attrs["explained"], ranking.attrs["summary"]
    assert set(significant["feature"]) <= expected, significant[["feature", "reasons"]]
    assert len(significant) and ranking["feature"].iloc[0] in expected
    assert (significant["onset"] - onset).abs().max() <= pd.Timedelta("2h")


def test_a_simulated_clean_world_explains_nothing(simulated):
    lake, truth = simulated("clean")
    end = pd.Timestamp(truth["end"])
    reader = open_lake(lake=str(lake))
    for model in reader.read("models")["model_id"].unique():
        ranking = rank_features(reader, model, onset=end - pd.Timedelta("2D"), end=end)
        assert not ranking["significant"].any(), (model, ranking.head(3)[["feature", "reasons"]])
