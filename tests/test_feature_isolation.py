"""Real-time feature isolation on synthetic incidents whose features are known."""

import numpy as np
import pandas as pd
import pytest

from feature_world import FEATURES, START, serving
from hawkeye_dagster.analysis.feature_isolation import isolate_features
from hawkeye_dagster.analysis.feature_stats import PREDICTION, hourly_stats, reference_profile
from hawkeye_dagster.time_range import TimeRange

ONSET = START + pd.Timedelta("7D 14h")
WINDOW = TimeRange(START + pd.Timedelta("7D 12h"), START + pd.Timedelta("8D"))
ALPHA = 0.01


def _isolate(incidents):
    frame = serving(days=8, per_hour=300, seed=4, incidents=incidents)
    columns = [*FEATURES, PREDICTION]
    reference = reference_profile(frame[frame["ts"] < START + pd.Timedelta("3D")], columns)
    stats = hourly_stats(frame, columns, reference.edges)
    return isolate_features(stats, reference, WINDOW)


def test_shifted_features_are_isolated_with_their_onset():
    found = _isolate({1: (ONSET, lambda x: x + 1.0), 6: (ONSET, lambda x: np.full_like(x, np.nan))})
    table = found.features.set_index("feature")
    significant = set(table.index[table["p_value"] * len(table) < ALPHA])
    assert significant == {"f1", "f6"}
    assert set(found.features["feature"].head(2)) == {"f1", "f6"}
    assert table.loc["f6", "view"] == "null_fraction"
    assert table.loc["f1", "z"] > 3
    assert table.loc["f1", "corr"] > 0.5  # f1 raises the predictions
    for feature in ("f1", "f6"):
        assert abs(table.loc[feature, "onset"] - ONSET) <= pd.Timedelta("1h")
    assert found.prediction["p_value"] < ALPHA
    assert abs(found.prediction["onset"] - ONSET) <= pd.Timedelta("1h")


def test_a_clean_world_isolates_nothing():
    found = _isolate({})
    table = found.features
    assert (table["p_value"] * len(table) >= ALPHA).all(), table.head()
    assert found.prediction["p_value"] >= ALPHA
    # the daily cycle of f0 is no shift, though the window holds only afternoon hours
    assert table.set_index("feature").loc["f0", "p_value"] > ALPHA


def test_a_window_without_baseline_is_refused():
    frame = serving(days=1, per_hour=50)
    columns = [*FEATURES, PREDICTION]
    reference = reference_profile(frame, columns)
    with pytest.raises(ValueError):
        isolate_features(hourly_stats(frame, columns, reference.edges), reference,
                         TimeRange(START, START + pd.Timedelta("1D")))
