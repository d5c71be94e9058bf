"""Hourly feature statistics against numpy computed column by column."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hawkeye_dagster.analysis.feature_stats import (FeatureStats, ReferenceProfile, hourly_stats,
                                                    reference_edges, reference_profile)
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.summary_shape import QUANTILES

DAY = pd.Timestamp("2026-03-04", tz="UTC")


def _frame(values: dict[str, np.ndarray], seconds: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"ts": DAY + pd.to_timedelta(seconds, unit="s")})
    for name, column in values.items():
        frame[name] = column
    return frame


def _messy(seed: int = 0, n: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32)
    a[rng.random(n) < 0.1] = np.nan
    a[rng.random(n) < 0.03] = np.inf
    a[rng.random(n) < 0.03] = -np.inf
    b = rng.integers(0, 4, n).astype(np.float32)  # discrete: repeated edges
    b[::17] = -0.0
    c = np.full(n, np.nan, dtype=np.float32)  # never a finite value
    frame = _frame({"a": a, "b": b, "c": c}, np.sort(rng.integers(0, 86400 // 2, n)))
    frame["prediction"] = rng.random(n)
    return frame


def _expected(frame: pd.DataFrame, column: str, edges: np.ndarray) -> pd.DataFrame:
    """The statistics of one column per hour, by numpy, hour by hour."""
    rows = []
    for hour, part in frame.groupby(frame["ts"].dt.floor("h")):
        x = part[column].to_numpy(np.float32).astype(np.float64)
        fin = x[np.isfinite(x)]
        bins = np.searchsorted(edges.astype(np.float64), fin, side="right")
        row = {"hour": hour, "count": len(x), "n_null": int(np.isnan(x).sum()),
               "n_inf": int(np.isinf(x).sum()),
               "hist_count": np.bincount(bins, minlength=len(edges) + 1),
               "hist_sum": np.bincount(bins, weights=fin, minlength=len(edges) + 1)}
        if len(fin):
            row |= {"mean": fin.mean(), "std": fin.std(), "min": fin.min(), "max": fin.max(),
                    **dict(zip(["p1", "p5", "p25", "p50", "p75", "p95", "p99"],
                               np.quantile(fin, QUANTILES)))}
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("block_elements", [1, 7000, 1 << 23])
def test_statistics_match_numpy_per_hour_and_column(block_elements):
    frame = _messy()
    columns = ["a", "b", "c", "prediction"]
    edges = reference_edges(frame, columns, n_bins=8)
    stats = hourly_stats(frame, columns, edges, block_elements=block_elements)
    got = stats.to_frame()
    for i, column in enumerate(columns):
        want = _expected(frame, column, edges[i])
        mine = got[got["column"] == column].reset_index(drop=True)
        assert (mine["hour"] == want["hour"]).all()
        for name in ("count", "n_null", "n_inf"):
            np.testing.assert_array_equal(mine[name], want[name])
        for name in ("mean", "std", "min", "max", "p1", "p5", "p25", "p50", "p75", "p95", "p99"):
            expected = want[name] if name in want else np.full(len(want), np.nan)
            np.testing.assert_allclose(mine[name], expected, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{column} {name}")
        np.testing.assert_array_equal(np.stack(mine["hist_count"]), np.stack(want["hist_count"]))
        np.testing.assert_allclose(np.stack(mine["hist_sum"]), np.stack(want["hist_sum"]),
                                   rtol=1e-9, atol=1e-9)
    assert got.loc[got["column"] == "c", "mean"].isna().all()
    assert (got.loc[got["column"] == "c", "null_fraction"] == 1).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([np.nan, np.inf, 0.0])),
                min_size=1, max_size=60),
       st.integers(0, 3))
def test_statistics_of_any_values(values, hours):
    x = np.asarray(values, dtype=np.float32)
    seconds = (np.arange(len(x)) % (hours + 1)) * 3600
    frame = _frame({"x": x}, seconds)
    edges = np.array([[-1.0, 0.0, 0.0, 5.0]], dtype=np.float32)
    stats = hourly_stats(frame, ["x"], edges).to_frame()
    want = _expected(frame, "x", edges[0])
    np.testing.assert_array_equal(np.stack(stats["hist_count"]), np.stack(want["hist_count"]))
    np.testing.assert_array_equal(stats["n_null"], want["n_null"])
    if "p50" in want:
        np.testing.assert_allclose(stats["p50"], want["p50"], rtol=1e-12)


def test_reference_edges_are_numpy_quantiles_of_the_finite_values():
    frame = _messy(seed=3)
    edges = reference_edges(frame, ["a", "prediction"], n_bins=10)
    for i, column in enumerate(["a", "prediction"]):
        x = frame[column].to_numpy(np.float32).astype(np.float64)
        np.testing.assert_allclose(edges[i], np.quantile(x[np.isfinite(x)], np.arange(1, 10) / 10),
                                   rtol=1e-6)


def test_frame_round_trip_concat_and_pooling():
    frame = _messy(seed=1)
    columns = ["a", "b", "prediction"]
    profile = reference_profile(frame, columns, n_bins=6)
    back = ReferenceProfile.from_frame(profile.to_frame())
    np.testing.assert_array_equal(back.edges, profile.edges)
    np.testing.assert_array_equal(back.stats.hist_count, profile.stats.hist_count)
    assert back.stats.hours.equals(profile.stats.hours)

    noon = DAY + pd.Timedelta("6h")
    halves = [frame[frame["ts"] < noon], frame[frame["ts"] >= noon]]
    joined = FeatureStats.concat([hourly_stats(h, columns, profile.edges) for h in halves[::-1]])
    np.testing.assert_array_equal(joined.hist_count, profile.stats.hist_count)
    assert joined.hours.equals(profile.stats.hours)

    pooled = profile.stats.pooled()
    x = frame[columns].to_numpy(np.float32).astype(np.float64)
    x[~np.isfinite(x)] = np.nan
    np.testing.assert_allclose(pooled.mean, np.nanmean(x, axis=0), rtol=1e-9)
    np.testing.assert_allclose(pooled.std, np.nanstd(x, axis=0), rtol=1e-9)
    np.testing.assert_array_equal(pooled.min, np.nanmin(x, axis=0))


@pytest.mark.parametrize("mutate, column", [
    (lambda f: f.drop(columns=["a"]), "a"),
    (lambda f: f.assign(a="text"), "a"),
    (lambda f: f.drop(columns=["ts"]), "ts"),
    (lambda f: f.assign(ts=f["ts"].where(f.index > 0)), "ts"),
    (lambda f: f.assign(ts=1.5), "ts"),
])
def test_bad_input_names_the_column(mutate, column):
    frame = mutate(_messy(n=50))
    with pytest.raises(ContractError) as err:
        hourly_stats(frame, ["a"], np.zeros((1, 3), np.float32))
    assert err.value.column == column and err.value.table == "serving_samples"


def test_bad_edges_are_refused():
    frame = _messy(n=50)
    with pytest.raises(ValueError):
        hourly_stats(frame, ["a"], np.array([[1.0, 0.0]], np.float32))
    with pytest.raises(ValueError):
        hourly_stats(frame, ["a", "b"], np.zeros((1, 3), np.float32))
