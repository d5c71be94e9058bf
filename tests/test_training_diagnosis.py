import numpy as np
import pandas as pd
import pytest
import torch

from hawkeye_dagster.analysis.training_diagnosis import (
    curve_checks, neighbour_checks, neighbour_partitions, partition_profiles, rank_partitions,
    split_partition_key, train_serve_skew, training_lineage,
)
from hawkeye_dagster.errors import UnknownIdError
from hawkeye_dagster.simulate.training import EXPLODING_LR, train

torch.set_num_threads(1)
FEATURES = ["a", "b c", "d.é"]
DAYS = pd.date_range("2026-01-01", periods=14).strftime("%Y-%m-%d").tolist()


def _rows(rng, n, shift=0.0):
    x = rng.standard_normal((n, len(FEATURES))).astype(np.float32)
    x[:, 1] += shift
    x[:, 2] = rng.lognormal(0.0, 1.5, n)  # heavy-tailed, like counts: its std is noisy
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-x[:, 0]))).astype(float)
    return frame


def _dataset(seed=0, broken_labels=None, shifted=None, nulls=None):
    rng = np.random.default_rng(seed)
    parts = []
    for day in DAYS:
        frame = _rows(rng, 2000 + int(rng.integers(-100, 100)), 1.5 if day == shifted else 0.0)
        if day == broken_labels:
            frame["label"] = 0.0
        if day == nulls:
            frame.loc[frame.index[::3], "a"] = np.nan
        parts.append(frame.assign(partition=day, dataset_id="ds"))
    return pd.concat(parts, ignore_index=True)


def _diagnose(data, serving):
    profile = partition_profiles(data, FEATURES, "binary_classification")
    checks = neighbour_checks(profile)
    skew = train_serve_skew(data, serving, FEATURES, "binary_classification")
    return checks, skew, rank_partitions(checks, skew)


@pytest.fixture(scope="module")
def serving():
    return _rows(np.random.default_rng(99), 5000)


def test_clean_partitions_raise_nothing(serving):
    checks, skew, ranked = _diagnose(_dataset(), serving)
    assert not checks["flagged"].any(), checks[checks["flagged"]]
    assert not skew["flagged"].any(), skew[skew["flagged"]]
    assert not ranked["flagged"].any() and len(ranked) == len(DAYS)


def test_the_bad_partitions_and_statistics_are_found(serving):
    data = _dataset(broken_labels=DAYS[9], shifted=DAYS[4], nulls=DAYS[11])
    checks, skew, ranked = _diagnose(data, serving)
    flagged = checks[checks["flagged"]]
    assert set(flagged["partition"]) == {DAYS[4], DAYS[9], DAYS[11]}
    assert set(flagged.loc[flagged["partition"] == DAYS[9], "subject"]) == {"label"}
    assert set(flagged.loc[flagged["partition"] == DAYS[4], "subject"]) == {"b c"}
    assert set(flagged.loc[flagged["partition"] == DAYS[11], "stat"]) == {"null_fraction"}
    skewed = skew[skew["flagged"]]
    assert set(zip(skewed["partition"], skewed["subject"])) == {(DAYS[4], "b c"), (DAYS[9], "label")}
    assert ranked["flagged"].sum() == 3
    assert ranked.iloc[0]["partition"] == DAYS[9]  # labels all zero: the strongest signal
    assert "label rate 0" in ranked.iloc[0]["reason"]


def test_profiles_hold_the_statistics(serving):
    data = _dataset()
    profile = partition_profiles(data, FEATURES, "binary_classification").set_index(
        ["partition", "subject", "stat"])["value"]
    part = data[data["partition"] == DAYS[0]]
    assert profile[(DAYS[0], "*", "rows")] == len(part)
    assert profile[(DAYS[0], "label", "rate")] == pytest.approx(part["label"].mean())
    rate = part["label"].mean()
    assert profile[(DAYS[0], "label", "imbalance")] == pytest.approx(min(rate, 1 - rate))
    assert profile[(DAYS[0], "b c", "std")] == pytest.approx(part["b c"].std(ddof=0), rel=1e-6)


def test_lineage_navigation():
    snapshots = pd.DataFrame({"model_id": ["m", "m"], "snapshot_id": ["s1", "s2"],
                              "training_run_id": ["r1", None]})
    runs = pd.DataFrame({"training_run_id": ["r1"], "model_id": ["m"], "dataset_id": ["ds"],
                         "partitions": [["2026-01-02", "2026-01-01"]]})
    lineage = training_lineage(snapshots, runs, "s1")
    assert lineage.partitions == ("2026-01-01", "2026-01-02")
    assert lineage.partition_keys == ["ds/2026-01-01", "ds/2026-01-02"]
    assert training_lineage(snapshots, runs, "s2") is None
    with pytest.raises(UnknownIdError):
        training_lineage(snapshots, runs, "nope")
    assert split_partition_key("ds x/2026-01-01") == ("ds x", "2026-01-01")
    with pytest.raises(ValueError):
        split_partition_key("no-slash")
    assert neighbour_partitions(DAYS, [DAYS[5]], k=2) == DAYS[3:8]
    assert neighbour_partitions(DAYS, [DAYS[0], DAYS[1]], k=1) == DAYS[:3]


def _run(run_id, seed, defect=None, steps=300):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3000, 5)).astype(np.float32)
    x[:, 2] = np.abs(x[:, 2]) * 3
    y = (rng.random(3000) < 1 / (1 + np.exp(-x[:, 0]))).astype(float)
    result = train(x, y, log_position=2, hidden=(16, 8), binary=True, steps=steps, seed=seed,
                   defect=defect)
    return pd.DataFrame({"training_run_id": run_id, "step": np.arange(len(result.loss)),
                         "loss": result.loss, "grad_norm": result.grad_norm})


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_real_training_curves():
    metrics = pd.concat([_run("ok-0", 0), _run("ok-1", 1), _run("boom", 0, EXPLODING_LR)])
    curves = curve_checks(metrics).set_index("training_run_id")
    assert curves.loc[["ok-0", "ok-1"], "healthy"].all()
    assert not curves.loc[["ok-0", "ok-1"], ["diverged", "exploded", "stalled"]].any().any()
    boom = curves.loc["boom"]
    assert boom["diverged"] and boom["exploded"] and not boom["healthy"]
    # the learning rate grows 6 % a step from 3e-3: Adam's steps stop converging around lr ~ 0.1
    assert 30 <= boom["divergence_step"] <= 110
    assert boom["divergence_step"] <= boom["explosion_step"] <= 150
    assert "exploded from step" in boom["reason"]


def test_synthetic_curves_give_the_onset_step():
    steps = np.arange(400)
    rng = np.random.default_rng(0)
    loss = 0.7 * np.exp(-steps / 60) + 0.3 + 0.01 * rng.standard_normal(400)
    grad = 1.0 + 0.1 * rng.standard_normal(400)
    grad_boom = grad.copy()
    grad_boom[250:] *= 1.15 ** np.arange(150)
    loss_nan = loss.copy()
    loss_nan[300:] = np.nan
    flat = 0.69 + 0.001 * rng.standard_normal(400)
    frame = pd.concat([
        pd.DataFrame({"training_run_id": r, "step": steps, "loss": lo, "grad_norm": g})
        for r, lo, g in [("ok", loss, grad), ("grad", loss, grad_boom), ("nan", loss_nan, grad),
                         ("flat", flat, grad)]])
    curves = curve_checks(frame).set_index("training_run_id")
    assert curves.loc["ok", "healthy"] and 150 <= curves.loc["ok", "plateau_step"] <= 300
    assert curves.loc["grad", "exploded"] and 250 <= curves.loc["grad", "explosion_step"] <= 256
    assert not curves.loc["grad", "diverged"]
    assert curves.loc["nan", "diverged"] and not curves.loc["nan", "exploded"]
    assert curves.loc["flat", "stalled"] and not curves.loc["flat", "healthy"]
