"""Feature health checks: learned limits, the Great Expectations run, and the alerts."""

import numpy as np
import pandas as pd
import pytest

from feature_world import FEATURES, START, serving
from hawkeye_dagster.analysis.feature_expectations import run_expectations
from hawkeye_dagster.analysis.feature_health import (
    ALERT_COLUMNS, CHECKS, alerts_from_failures, check_frame, learn_thresholds)
from hawkeye_dagster.analysis.feature_stats import PREDICTION, hourly_stats, reference_profile
from hawkeye_dagster.contract import SEVERITIES, TABLES

COLUMNS = [*FEATURES, PREDICTION]
DAY5 = START + pd.Timedelta("5D")


def _nulls(x):
    return np.full_like(x, np.nan)


@pytest.fixture(scope="module")
def reference():
    frame = serving(days=4, per_hour=200, seed=1)
    frame.loc[frame.index % 50 == 0, "f9"] = np.nan  # a feature that is always 2% null
    return reference_profile(frame, COLUMNS)


def _alerts(reference, incidents, **overrides):
    day = serving(days=6, per_hour=200, seed=2, incidents=incidents)
    day = day[day["ts"] >= DAY5]
    day.loc[day.index % 50 == 0, "f9"] = np.nan
    stats = hourly_stats(day, COLUMNS, reference.edges)
    thresholds = learn_thresholds(reference, FEATURES, overrides=overrides or None)
    frame = check_frame(stats, reference, thresholds)
    success, failed = run_expectations(frame)
    return success, alerts_from_failures(frame, failed)


def test_learned_limits_follow_the_reference(reference):
    limits = learn_thresholds(reference, FEATURES)
    assert list(limits.index) == FEATURES
    assert limits.loc["f9", "null_fraction_max"] > limits.loc["f8", "null_fraction_max"]
    assert limits.loc["f8", "null_fraction_max"] == pytest.approx(0.05)
    assert (limits["value_min"] < limits["p1_typical"]).all()
    assert (limits["value_max"] > limits["p99_typical"]).all()
    assert (limits["psi_max"] >= 0.2).all() and (limits["wasserstein_norm_max"] >= 0.1).all()
    with pytest.raises(KeyError):
        learn_thresholds(reference, FEATURES, overrides={"f1": {"no_such_limit": 1.0}})


def test_a_clean_day_raises_no_alert(reference):
    success, alerts = _alerts(reference, {})
    assert all(success.values()), success
    assert alerts.empty
    assert list(alerts.columns) == list(ALERT_COLUMNS)


def test_nulls_and_a_shift_alert_on_their_features_only(reference):
    incidents = {5: (DAY5 + pd.Timedelta("14h"), _nulls),
                 7: (DAY5 + pd.Timedelta("20h"), lambda x: x + 3)}
    success, alerts = _alerts(reference, incidents)
    assert not success["null_fraction"] and not success["mean_shift"]
    assert set(alerts["feature_name"]) == {"f5", "f7"}
    nulls = alerts[alerts["feature_name"] == "f5"].set_index("alert_type")
    assert "null_fraction" in nulls.index
    assert nulls.loc["null_fraction", "ts"] == DAY5 + pd.Timedelta("14h")
    assert nulls.loc["null_fraction", "severity"] == "critical"
    assert "10 of 24 hours" in nulls.loc["null_fraction", "detail"]
    shifted = alerts[alerts["feature_name"] == "f7"].set_index("alert_type")
    assert {"mean_shift", "drift_psi", "drift_wasserstein"} <= set(shifted.index)
    assert (shifted["ts"] == DAY5 + pd.Timedelta("20h")).all()
    assert alerts["severity"].isin(SEVERITIES).all()
    assert list(alerts.columns) == list(TABLES["feature_alerts"].column_names)


def test_overridden_limits_silence_a_check(reference):
    incidents = {5: (DAY5 + pd.Timedelta("14h"), _nulls)}
    _, alerts = _alerts(reference, incidents, f5={"null_fraction_max": 1.0})
    assert "null_fraction" not in set(alerts.loc[alerts["feature_name"] == "f5", "alert_type"])


def test_every_check_reads_columns_of_the_check_frame(reference):
    day = serving(days=1, per_hour=50, seed=3)
    frame = check_frame(hourly_stats(day, COLUMNS, reference.edges), reference,
                        learn_thresholds(reference, FEATURES))
    for check in CHECKS:
        assert {check.observed, check.limit, check.typical} <= set(frame.columns), check.name
    assert set(frame["column"]) == set(FEATURES)


def test_a_single_bad_hour_is_not_an_alert(reference):
    success, alerts = _alerts(reference, {5: (DAY5 + pd.Timedelta("23h"), _nulls)})
    assert not success["null_fraction"]  # the check itself sees the hour
    assert alerts.empty
