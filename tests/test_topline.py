"""Top-line anomaly detection on synthetic series with known incidents and on clean ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hawkeye_dagster.analysis.robust import cusum_excursions
from hawkeye_dagster.analysis.topline import detect_topline_anomalies, seasonal_scores
from hawkeye_dagster.time_range import TimeRange

START = pd.Timestamp("2026-10-01", tz="UTC")
WINDOW = TimeRange.of(START + pd.Timedelta("7D"), START + pd.Timedelta("14D"))


def topline(seed: int, *, days: int = 14, drop: dict | None = None) -> pd.DataFrame:
    """Hourly metrics of two products with daily seasonality, noise and one outlier per series.

    ``drop`` = ``{"product", "segment", "metric", "at", "factor"}`` multiplies
    that series by ``factor`` from ``at`` on.
    """
    rng = np.random.default_rng(seed)
    ts = pd.date_range(START, periods=days * 24, freq="h")
    hour = ts.hour.to_numpy()
    frames = []
    for product, segment, metric, level in [
        ("feed", "us", "engagement", 100.0), ("feed", "eu", "engagement", 60.0),
        ("ads", "us", "revenue", 20.0), ("ads", "us", "churn_lower_is_better", 5.0),
    ]:
        season = 1.0 + 0.3 * np.sin(2 * np.pi * hour / 24)
        value = level * season * (1 + 0.01 * rng.standard_normal(len(ts)))
        value[rng.integers(len(ts))] *= 1.5  # one broken bucket
        if drop and [product, segment, metric] == [drop[k] for k in ("product", "segment",
                                                                     "metric")]:
            value = np.where(ts >= drop["at"], value * drop["factor"], value)
        frames.append(pd.DataFrame({"ts": ts, "product": product, "segment": segment,
                                    "metric": metric, "value": value}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("seed", range(5))
def test_clean_series_raise_nothing(seed):
    assert detect_topline_anomalies(topline(seed), WINDOW).empty


@pytest.mark.parametrize("seed", range(3))
def test_drop_found_with_onset_and_magnitude(seed):
    at = START + pd.Timedelta("10D 05:00:00")
    metrics = topline(seed, drop={"product": "feed", "segment": "us", "metric": "engagement",
                                  "at": at, "factor": 0.95})
    found = detect_topline_anomalies(metrics, WINDOW)
    assert len(found) == 1
    row = found.iloc[0]
    assert (row["product"], row["segment"], row["metric"]) == ("feed", "us", "engagement")
    assert abs(row["onset"] - at) <= pd.Timedelta("2h")
    assert row["relative_change"] == pytest.approx(-0.05, abs=0.01)
    assert row["shift_z"] > 3


def test_lower_is_better_rise_is_a_degradation_and_fall_is_not():
    at = START + pd.Timedelta("9D")
    key = {"product": "ads", "segment": "us", "metric": "churn_lower_is_better", "at": at}
    worse = detect_topline_anomalies(topline(0, drop={**key, "factor": 1.1}), WINDOW)
    assert list(worse["metric"]) == ["churn_lower_is_better"]
    assert worse.iloc[0]["relative_change"] == pytest.approx(0.1, abs=0.02)
    better = detect_topline_anomalies(topline(0, drop={**key, "factor": 0.9}), WINDOW)
    assert better.empty


def test_improvement_of_higher_is_better_metric_is_not_an_incident():
    metrics = topline(1, drop={"product": "feed", "segment": "eu", "metric": "engagement",
                               "at": START + pd.Timedelta("9D"), "factor": 1.1})
    assert detect_topline_anomalies(metrics, WINDOW).empty


def test_most_severe_first():
    metrics = topline(2, drop={"product": "feed", "segment": "eu", "metric": "engagement",
                               "at": START + pd.Timedelta("8D"), "factor": 0.8})
    other = topline(2, drop={"product": "ads", "segment": "us", "metric": "revenue",
                             "at": START + pd.Timedelta("12D"), "factor": 0.95})
    both = pd.concat([metrics[metrics["product"] == "feed"], other[other["product"] == "ads"]])
    found = detect_topline_anomalies(both, WINDOW)
    assert list(found["segment"] + "/" + found["metric"]) == ["eu/engagement", "us/revenue"]


def test_seasonality_is_removed():
    metrics = topline(3)
    scores = seasonal_scores(metrics, WINDOW.start)
    assert scores.bucket == pd.Timedelta("1h")
    inside = scores.z.loc[scores.z.index >= WINDOW.start]
    # a plain z-score against the overall level would swing by the ±30% daily cycle
    assert np.nanmedian(np.abs(inside.to_numpy())) < 1.5


def test_window_without_reference_uses_the_first_days():
    metrics = topline(4, drop={"product": "feed", "segment": "us", "metric": "engagement",
                               "at": START + pd.Timedelta("5D"), "factor": 0.9})
    found = detect_topline_anomalies(metrics)
    assert list(found["segment"]) == ["us"]
    assert abs(found.iloc[0]["onset"] - (START + pd.Timedelta("5D"))) <= pd.Timedelta("2h")


def test_cusum_excursion_bounds():
    z = np.zeros((20, 2))
    z[5:9, 0] = 4.0
    onset, peak, strength = cusum_excursions(z, allowance=1.0)
    assert (onset[0], peak[0], strength[0]) == (5, 8, 12.0)
    assert strength[1] == 0.0
