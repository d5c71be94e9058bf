"""Top-line to models: the degraded model ranks first, clean models are not suspects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import serving_world as world
from hawkeye_dagster.analysis.model_isolation import (
    EPS, bucket_quality, degradation_z, rank_models, row_loss)
from hawkeye_dagster.analysis.topline import detect_topline_anomalies, seasonal_scores
from hawkeye_dagster.time_range import TimeRange

WINDOW = TimeRange.of(world.START + pd.Timedelta("7D"), world.START + pd.Timedelta("14D"))
BINARY = "binary_classification"


def ranking(incident: str, seed: int = 0, *, onset=None) -> pd.DataFrame:
    w = world.world(incident, seed)
    scores = seasonal_scores(w.topline, WINDOW.start)
    anomalies = detect_topline_anomalies(w.topline, WINDOW)
    if onset is None:
        assert len(anomalies), "the incident must move the top line"
        onset, end = anomalies["onset"].iloc[0], anomalies["end"].iloc[0]
    else:
        end = scores.z.index[-1]
    qualities = {m: bucket_quality(w.samples[m], BINARY, scores.bucket) for m in ("m1", "m2")}
    return rank_models(scores.z[("feed", "us", "engagement")], onset, end, qualities,
                       {"m1": BINARY, "m2": BINARY})


@pytest.mark.parametrize("incident", ["features", "bad_snapshot", "traffic_ramp", "nan_snapshot"])
@pytest.mark.parametrize("seed", [0, 1])
def test_degraded_model_ranks_first_and_alone(incident, seed):
    ranked = ranking(incident, seed)
    assert list(ranked["model_id"]) == ["m1", "m2"]
    assert list(ranked["suspect"]) == [True, False]
    assert ranked["loss_after"].iloc[0] > ranked["loss_before"].iloc[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_world_has_no_degraded_model(seed):
    ranked = ranking("none", seed, onset=world.ONSET)
    assert (ranked["degradation_z"].abs() < 2).all()
    # at most the weak fallback: the top line is said to have degraded, so the best
    # correlated model is followed
    assert ranked["suspect"].sum() <= 1


def test_weakly_degraded_model_is_followed_only_when_nothing_stronger():
    grid = pd.date_range(world.START, periods=world.DAYS * 24, freq="h")
    w = world.world("features", 0)
    quality = {m: bucket_quality(w.samples[m], BINARY, pd.Timedelta("1h")) for m in ("m1", "m2")}
    topline_z = pd.Series(np.where(grid >= world.ONSET, 4.0, 0.0), index=grid)
    tasks = {"m1": BINARY, "m2": BINARY}
    strong = rank_models(topline_z, world.ONSET, grid[-1], quality, tasks).set_index("model_id")
    z = strong.loc["m1", "degradation_z"]
    assert strong["suspect"].to_dict() == {"m1": True, "m2": False}
    weak = rank_models(topline_z, world.ONSET, grid[-1], quality, tasks,
                       min_degradation_z=1.5 * z).set_index("model_id")
    assert weak["suspect"].to_dict() == {"m1": True, "m2": False}
    none = rank_models(topline_z, world.ONSET, grid[-1], quality, tasks,
                       min_degradation_z=3 * z).set_index("model_id")
    assert not none["suspect"].any()


def test_nan_predictions_are_the_worst_quality():
    ranked = ranking("nan_snapshot").set_index("model_id")
    assert ranked.loc["m1", "nan_fraction"] > 0.02
    assert ranked.loc["m2", "nan_fraction"] == 0
    p = np.array([0.9, np.nan, 0.1])
    loss = row_loss(p, np.array([1.0, 1.0, np.nan]), BINARY)
    assert loss[1] == pytest.approx(-np.log(EPS)) and loss[1] > loss[0] and np.isnan(loss[2])
    reg = row_loss(np.array([1.0, np.inf]), np.array([0.0, 0.0]), "regression", regression_cap=50.0)
    assert list(reg) == [1.0, 50.0]


def test_bucket_quality_matches_direct_computation():
    w = world.world("none", 3)
    samples = w.samples["m3"].head(500)
    quality = bucket_quality(samples, "regression", pd.Timedelta("1h"), by=["snapshot_id"])
    first = samples[samples["ts"].dt.floor("h") == samples["ts"].min().floor("h")]
    row = quality.iloc[0]
    labeled = first.dropna(subset=["label"])
    assert row["n"] == len(first) and row["n_labeled"] == len(labeled)
    assert row["loss"] == pytest.approx(((labeled["prediction"] - labeled["label"]) ** 2).mean())
    assert row["bias"] == pytest.approx((labeled["prediction"] - labeled["label"]).mean())
    assert row["prediction_mean"] == pytest.approx(first["prediction"].mean())


def test_unlabelled_buckets_are_judged_by_prediction_shift():
    w = world.world("none", 4)
    samples = w.samples["m2"].copy()
    late = samples["ts"] >= world.ONSET
    samples.loc[late, "label"] = np.nan
    shifted = samples.copy()
    shifted.loc[late, "prediction"] = np.clip(shifted.loc[late, "prediction"] + 0.2, 0, 1)
    grid = pd.date_range(world.START, periods=world.DAYS * 24, freq="h")
    during = grid >= world.ONSET
    calm = degradation_z(bucket_quality(samples, BINARY, pd.Timedelta("1h")), grid, world.ONSET)
    moved = degradation_z(bucket_quality(shifted, BINARY, pd.Timedelta("1h")), grid, world.ONSET)
    assert abs(calm[during].mean()) < 1.0
    assert moved[during].mean() > 5.0
