"""Ablation attributions against Captum, and the importance and contribution comparisons."""

import warnings

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation

from bench.served_models import ELEMENTWISE_PREFIX, SHAPES, served_model
from hawkeye_dagster.analysis.ablation import (
    ablation_attributions, contribution_shift, importance_change)
from hawkeye_dagster.analysis.feature_prefix import linear_frontier

torch.set_num_threads(1)
F = 24


def _mlp(seed: int = 0, out: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(F, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.Tanh(),
              torch.nn.Linear(8, 1), torch.nn.Sigmoid()]
    net = torch.nn.Sequential(*layers)
    return net if out == 1 else torch.nn.Sequential(net, torch.nn.Flatten(0))


class _Scaled(torch.nn.Module):
    """An input that is transformed before its first linear layer (a per-feature prefix)."""

    def __init__(self):
        super().__init__()
        self.net = _mlp(3)

    def forward(self, x):
        return self.net(x * 2 + 1)


def _exported(module: torch.nn.Module) -> torch.nn.Module:
    batch = torch.export.Dim("batch")
    return torch.export.export(module, (torch.zeros(4, F),), dynamic_shapes=({0: batch},)).module()


def _captum(model, x, baselines, groups=None):
    fa = FeatureAblation(lambda t: model(t).reshape(-1))
    mask = None if groups is None else groups[None]
    return fa.attribute(x, baselines=baselines[None], feature_mask=mask)


@pytest.mark.parametrize("model", [
    _exported(_mlp(0)),            # FX graph with a first linear layer: the shortcut
    _mlp(1, out=0),                # a plain module, output [batch]
    _exported(_Scaled()),          # FX graph whose input is transformed first: the shortcut
])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("max_elements", [1 << 20, 5000])
def test_attributions_equal_captum_feature_ablation(model, grouped, max_elements):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(700, F, generator=gen)
    baselines = torch.randn(F, generator=gen) * 0.3
    groups = torch.randint(0, 7, (F,), generator=gen) if grouped else None
    ours = ablation_attributions(model, x, baselines, groups=groups,
                                 max_batch_elements=max_elements)
    theirs = _captum(model, x, baselines, groups)
    assert ours.shape == (700, F)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert ours.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("max_elements", [1 << 20, 3000])
def test_served_shapes_equal_the_plain_path_and_captum(name, grouped, max_elements):
    served = served_model(name, n_features=None if name == "simulator_snapshot" else 40)
    assert (linear_frontier(served.module) is not None) == (served.kind == ELEMENTWISE_PREFIX)
    gen = torch.Generator().manual_seed(1)
    x = served.inputs(300)
    baselines = x.mean(dim=0) + torch.randn(served.n_features, generator=gen) * 0.1
    groups = (torch.randint(0, 7, (served.n_features,), generator=gen) if grouped else None)
    ours = ablation_attributions(served.module, x, baselines, groups=groups,
                                 max_batch_elements=max_elements)
    plain = ablation_attributions(served.eager, x, baselines, groups=groups)  # whole passes
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, _captum(served.module, x, baselines, groups),
                               atol=1e-5, rtol=0)
    assert ours.abs().max() > 1e-3


@pytest.mark.parametrize("value", [1e8, 1e30])
def test_rows_the_layer_update_cannot_take_run_whole(value):
    served = served_model("batchnorm_mlp", n_features=30)
    x = served.inputs(200)
    x[:3, 4] = value  # subtracting its contribution from a layer output would cancel
    baselines = x[3:].mean(dim=0)
    ours = ablation_attributions(served.module, x, baselines)
    torch.testing.assert_close(ours, ablation_attributions(served.eager, x, baselines),
                               atol=1e-5, rtol=0, equal_nan=True)
    assert ours[:3, 4].abs().min() > 1e-3  # ablating the huge value moves those rows


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        ablation_attributions(_mlp(0), torch.zeros(3, F, 1))
    with pytest.raises(ValueError):
        ablation_attributions(lambda t: t, torch.zeros(3, F))  # not one value per row
    with pytest.raises(ValueError):
        ablation_attributions(_mlp(0), torch.zeros(3, F),
                              groups=torch.zeros(F - 1, dtype=torch.long))


def _linear_attributions(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    model = torch.nn.Linear(len(weights), 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weights, dtype=torch.float32)[None])
    return ablation_attributions(model, torch.tensor(x, dtype=torch.float32)).numpy()


def test_importance_change_finds_the_reweighted_feature():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 6))
    before = np.array([1.0, -0.5, 0.3, 0.8, 0.2, 0.6])
    after = before * np.array([1, 1, 3.0, 1, 1, 1])
    table = importance_change(_linear_attributions(after, x), _linear_attributions(before, x),
                              list("abcdef"))
    row = table.set_index("feature").loc["c"]
    assert row["ratio"] == pytest.approx(3.0, rel=1e-5)
    assert row["ratio_low"] <= 3.0 + 1e-5 and row["ratio_high"] >= 3.0 - 1e-5
    assert row["p_value"] < 0.01
    assert table["feature"].iloc[0] == "c" and table["significant"].tolist() == [True] + [False] * 5
    others = table[table["feature"] != "c"]
    np.testing.assert_allclose(others["ratio"], 1.0, rtol=1e-5)
    assert (others["p_value"] == 1.0).all()
    importance = table.set_index("feature").loc[list("abcdef"), "importance"]
    np.testing.assert_allclose(importance, np.abs(_linear_attributions(after, x)).mean(axis=0))


def test_importance_of_an_unchanged_snapshot_does_not_move():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 6))
    w = rng.standard_normal(6)
    retrained = w * (1 + 0.01 * rng.standard_normal(6))
    table = importance_change(_linear_attributions(retrained, x), _linear_attributions(w, x),
                              list("abcdef"))
    assert (table["ratio"].between(0.95, 1.05)).all() and not table["significant"].any()


def test_contribution_shift_attributes_a_prediction_shift_to_the_moved_feature():
    rng = np.random.default_rng(2)
    w = np.array([1.0, 0.0, -0.7, 0.4])
    base = rng.standard_normal((1500, 4))
    window = rng.standard_normal((1500, 4))
    window[:, 1] += 3.0  # moved, but the model ignores it
    window[:, 2] += 1.0  # moved and matters
    table = contribution_shift(_linear_attributions(w, window), _linear_attributions(w, base),
                               list("abcd")).set_index("feature")
    assert table.loc["c", "p_value"] < 1e-10
    assert table.loc["c", "shift"] == pytest.approx(-0.7, abs=0.1)
    assert table.loc["b", "shift"] == 0 and table.loc["b", "p_value"] == 1.0
    assert table.loc[["a", "d"], "p_value"].min() > 1e-3
    # a linear model: the shifts add up to the shift of the mean prediction
    assert table["shift"].sum() == pytest.approx((window - base).mean(axis=0) @ w, rel=1e-5)


def test_importance_change_with_a_zero_baseline_warns_nothing():
    rng = np.random.default_rng(3)
    current = rng.standard_normal((400, 5))
    previous = current * np.array([1.0, 0.0, 0.0, 1.0, 1.0])  # b, c: unused before
    current[:, 2] = 0.0                                       # c: unused by both
    current[:, 3] = 0.0                                       # d: dropped
    previous[rng.random(400) < 0.995, 4] = 0.0               # e: barely used before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = importance_change(current, previous, list("abcde"))
    row = table.set_index("feature")
    assert row.loc["b", "ratio"] == np.inf
    assert row.loc["b", ["ratio_low", "ratio_high"]].tolist() == [np.inf, np.inf]
    assert np.isnan(row.loc["c", ["ratio", "ratio_low", "ratio_high"]].astype(float)).all()
    assert row.loc["d", ["ratio", "ratio_low", "ratio_high"]].tolist() == [0.0, 0.0, 0.0]
    assert row.loc["a", "ratio"] == 1.0 and row.loc["a", "p_value"] == 1.0
    assert np.isfinite(row.loc["e", "ratio"]) and row.loc["e", "ratio_high"] == np.inf
    # infinite and zero ratios rank as the largest changes; no importance either way, last
    assert table["feature"].iloc[-1] == "c" and set(table["feature"].iloc[:2]) == {"b", "d"}
