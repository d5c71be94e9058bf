"""Drift scores from stored histograms against scipy on the raw values."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from hawkeye_dagster.analysis.drift import THRESHOLDS, drift_table
from hawkeye_dagster.analysis.feature_stats import ReferenceProfile, hourly_stats, reference_profile

DAY = pd.Timestamp("2026-03-04", tz="UTC")


def _frame(x: np.ndarray, day: int, rng: np.random.Generator) -> pd.DataFrame:
    seconds = rng.integers(0, 86400, len(x))
    return pd.DataFrame({"ts": DAY + pd.Timedelta(days=day) + pd.to_timedelta(seconds, unit="s"),
                         "x": x.astype(np.float32)})


def _scipy_scores(ref: np.ndarray, cur: np.ndarray) -> dict[str, float]:
    ref, cur = ref.astype(np.float64), cur.astype(np.float64)
    return {"ks_statistic": stats.ks_2samp(ref, cur).statistic,
            "wasserstein_norm": stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)}


def _psi_evidently(p: np.ndarray, q: np.ndarray) -> float:
    """Evidently's PSI on bin shares (its zero filling, written out)."""
    def fill(v):
        small = v[v > 0].min()
        return np.where(v == 0, small / 1e6 if small <= 1e-4 else 1e-4, v)
    p, q = fill(p), fill(q)
    return float(np.sum((p - q) * np.log(p / q)))


@pytest.mark.parametrize("shift", [0.0, 0.4, 2.0])
def test_binned_data_matches_scipy_exactly(shift):
    rng = np.random.default_rng(1)
    profile = reference_profile(_frame(rng.standard_normal(20_000), 0, rng), ["x"], n_bins=20)
    edges = profile.edges[0].astype(np.float64)
    # one value per bin, shared by both samples: the data is already binned
    atoms = np.concatenate([[edges[0] - 1], (edges[1:] + edges[:-1]) / 2, [edges[-1] + 1]])
    atoms = atoms.astype(np.float32)
    ref = atoms[rng.integers(0, 20, 30_000)]
    cur = atoms[np.clip(rng.integers(0, 20, 12_000) + rng.poisson(shift * 3, 12_000), 0, 19)]
    reference = ReferenceProfile(profile.edges,
                                 hourly_stats(_frame(ref, 0, rng), ["x"], profile.edges))
    current = hourly_stats(_frame(cur, 1, rng), ["x"], profile.edges)
    got = drift_table(current, reference).iloc[0]

    for name, want in _scipy_scores(ref, cur).items():
        assert got[name] == pytest.approx(want, rel=1e-9, abs=1e-12), name
    p = np.bincount(np.searchsorted(atoms, ref), minlength=20) / len(ref)
    q = np.bincount(np.searchsorted(atoms, cur), minlength=20) / len(cur)
    assert got["js_distance"] == pytest.approx(jensenshannon(p, q), rel=1e-9, abs=1e-12)
    assert got["psi"] == pytest.approx(_psi_evidently(p, q), rel=1e-9)
    assert got["n_current"] == len(cur)


@pytest.mark.parametrize("seed", range(4))
def test_raw_data_within_the_documented_binning_error(seed):
    rng = np.random.default_rng(seed)
    ref = rng.gamma(2.0, 1.5, 25_000)
    cur = rng.gamma(2.0 + seed * 0.3, 1.5, 9_000) + seed * 0.2
    reference = reference_profile(_frame(ref, 0, rng), ["x"])
    current = hourly_stats(_frame(cur, 1, rng), ["x"], reference.edges)
    got = drift_table(current, reference).iloc[0]
    want = _scipy_scores(ref.astype(np.float32), cur.astype(np.float32))
    assert got["ks_statistic"] <= want["ks_statistic"] + 1e-12  # edges only: never above
    assert want["ks_statistic"] - got["ks_statistic"] <= got["ks_error_bound"]
    w_error = abs(got["wasserstein_norm"] - want["wasserstein_norm"])
    assert w_error <= got["wasserstein_norm_error_bound"]
    # the bounds are worst cases: with 30 bins the actual errors are far smaller
    assert want["ks_statistic"] - got["ks_statistic"] < 0.005
    assert abs(got["wasserstein_norm"] - want["wasserstein_norm"]) < 0.005


def test_same_distribution_is_below_evidently_thresholds_and_a_shift_is_above():
    rng = np.random.default_rng(7)
    reference = reference_profile(_frame(rng.lognormal(size=40_000), 0, rng), ["x"])
    same = hourly_stats(_frame(rng.lognormal(size=20_000), 1, rng), ["x"], reference.edges)
    moved = hourly_stats(_frame(rng.lognormal(0.5, size=20_000), 1, rng), ["x"], reference.edges)
    calm, shifted = drift_table(same, reference).iloc[0], drift_table(moved, reference).iloc[0]
    for name in ("psi", "js_distance", "wasserstein_norm"):
        assert calm[name] < THRESHOLDS[name] <= shifted[name], name


def test_hourly_drift_and_columns_missing_from_the_reference():
    rng = np.random.default_rng(2)
    frame = _frame(rng.standard_normal(5000), 0, rng)
    reference = reference_profile(frame, ["x"])
    current = hourly_stats(frame.assign(y=frame["x"] * 2), ["x", "y"],
                           np.vstack([reference.edges, reference.edges]))
    hourly = drift_table(current, reference, by_hour=True)
    assert list(hourly["column"].unique()) == ["x"]
    assert hourly["hour"].nunique() == 24
    pooled = drift_table(current, reference).iloc[0]
    assert pooled["psi"] == pytest.approx(0.0, abs=1e-12)
    assert pooled["ks_statistic"] == pytest.approx(0.0, abs=1e-12)
    assert pooled["wasserstein"] == pytest.approx(0.0, abs=1e-9)
