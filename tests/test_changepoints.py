"""Change points of lineage node statistics: seasonal, robust, vectorized over columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lineage_world import node_stats, shift, utc

from hawkeye_dagster.analysis.changepoints import (
    CHANGEPOINT_COLUMNS,
    detect_changepoints,
    pivot_node_stats,
    select_nodes,
)
from hawkeye_dagster.errors import ContractError

WINDOW = (utc("2026-10-09"), utc("2026-10-15"))


def _scan(stats):
    result = detect_changepoints(pivot_node_stats(stats), *WINDOW)
    return result.set_index(["node_id", "stat"])


def test_pivot_puts_stats_on_a_regular_grid():
    stats = node_stats(nodes=("a", "b"), days=2)
    stats = stats[stats["ts"] != utc("2026-10-01 05:00")]          # a missing bucket
    stats["ts"] = stats["ts"].dt.tz_localize(None)                  # naive means UTC
    wide = pivot_node_stats(stats)
    assert wide.shape == (48, 6)
    assert wide.index.freq == pd.Timedelta(hours=1) and str(wide.index.tz) == "UTC"
    assert wide.loc[utc("2026-10-01 05:00")].isna().all()
    row = stats.iloc[10]
    assert wide.loc[utc(str(row["ts"])), (row["node_id"], row["stat"])] == row["value"]
    assert list(select_nodes(wide, ["b", "zz"]).columns.get_level_values(0).unique()) == ["b"]


def test_pivot_names_a_missing_column():
    with pytest.raises(ContractError) as err:
        pivot_node_stats(pd.DataFrame({"ts": [], "node_id": [], "value": []}))
    assert (err.value.table, err.value.column) == ("lineage_node_stats", "stat")


@pytest.mark.parametrize("seed", range(4))
def test_clean_statistics_do_not_move(seed):
    result = _scan(node_stats(seed=seed))
    assert list(result.reset_index().columns) == list(CHANGEPOINT_COLUMNS)
    assert not result["moved"].any()
    assert result["onset"].isna().all()


def test_a_step_is_found_with_its_onset_and_size():
    stats = shift(node_stats(), ["s1"], "null_fraction", "2026-10-11 05:00", lambda v: v * 0 + 0.4)
    result = _scan(stats)
    assert result["moved"].sum() == 1
    found = result.loc[("s1", "null_fraction")]
    assert found["onset"] == utc("2026-10-11 05:00")
    assert found["before"] == pytest.approx(0.01, rel=0.05)
    assert found["after"] == pytest.approx(0.4)
    assert found["z"] > 100


def test_a_drop_is_found_too():
    stats = shift(node_stats(), ["t1"], "mean", "2026-10-12 00:00", lambda v: v / 1000)
    found = _scan(stats).loc[("t1", "mean")]
    assert found["moved"] and found["z"] < -20 and found["after"] == pytest.approx(0.005, rel=0.1)
    assert found["onset"] == utc("2026-10-12 00:00")


def test_one_outlier_is_not_a_move():
    stats = shift(node_stats(), ["s2"], "mean", "2026-10-11 00:00", lambda v: v)
    at = (stats["node_id"] == "s2") & (stats["stat"] == "mean") & (stats["ts"] == utc(
        "2026-10-11 00:00"))
    stats.loc[at, "value"] = 1e6
    assert not _scan(stats)["moved"].any()


def test_gradual_drift_gets_the_onset_where_it_began():
    def ramp(v):
        return v * np.linspace(1.0, 2.0, len(v))

    stats = shift(node_stats(), ["x1"], "row_count", "2026-10-12 00:00", ramp)
    found = _scan(stats).loc[("x1", "row_count")]
    assert found["moved"]
    assert utc("2026-10-12 00:00") <= found["onset"] <= utc("2026-10-12 06:00")


def test_like_hours_are_compared_not_the_overall_range():
    # row_count swings +-30% over the day; a night value at the daytime level is within the
    # series' overall range but far off for its hour: a move (a plain z-score would miss it)
    stats = shift(node_stats(), ["s3"], "row_count", "2026-10-12 00:00", lambda v: v * 0 + 1250)
    found = _scan(stats).loc[("s3", "row_count")]
    assert found["moved"]
    overall = node_stats().query("node_id == 's3' and stat == 'row_count'")["value"]
    assert overall.min() < 1250 < overall.max()


def test_an_outlier_in_the_baseline_does_not_hide_a_real_move():
    stats = shift(node_stats(), ["nf1"], "mean", "2026-10-12 00:00", lambda v: v * 1.3)
    at = (stats["node_id"] == "nf1") & (stats["stat"] == "mean") & (stats["ts"] == utc(
        "2026-10-05 03:00"))
    stats.loc[at, "value"] = 1e9        # would blow up a mean/std baseline
    found = _scan(stats).loc[("nf1", "mean")]
    assert found["moved"] and found["onset"] == utc("2026-10-12 00:00")


def test_daily_buckets_and_missing_history():
    days = pd.date_range("2026-01-01", periods=120, freq="D", tz="UTC")
    rng = np.random.default_rng(3)
    value = 100 + rng.standard_normal(len(days))
    value[100:] += 20
    stats = pd.DataFrame({"ts": days, "node_id": "n", "stat": "row_count", "value": value})
    wide = pivot_node_stats(stats)
    assert wide.index.freq == pd.Timedelta(days=1)
    found = detect_changepoints(wide, days[90], days[-1] + pd.Timedelta(days=1),
                                baseline=pd.Timedelta(days=60)).iloc[0]
    assert found["moved"] and found["onset"] == days[100]
    # a window before any data: nothing to score, nothing moved
    early = detect_changepoints(wide, utc("2025-01-01"), utc("2025-02-01"))
    assert not early["moved"].any()


def _weekend_dip(stats, depth=0.12):
    """Every node's row count ``depth`` lower on Saturdays and Sundays (2026-10-03/04, ...)."""
    weekend = stats["ts"].dt.dayofweek >= 5
    rows = weekend & (stats["stat"] == "row_count")
    stats = stats.copy()
    stats.loc[rows, "value"] *= 1 - depth
    return stats


def test_a_first_weekend_after_a_short_history_is_not_a_move():
    # history from Thursday 2026-10-01: the reference of a Sunday scan has seen one Saturday
    # morning and no Sunday, so the weekend's dip is not known to be normal, only possible
    wide = pivot_node_stats(_weekend_dip(node_stats()))
    found = detect_changepoints(wide, utc("2026-10-03 10:00"), utc("2026-10-06"))
    assert not found["moved"].any()
    # a week later every weekday is in the reference: the same dip is expected, still no move
    later = detect_changepoints(wide, utc("2026-10-10 10:00"), utc("2026-10-13"))
    assert not later["moved"].any()


def test_a_break_on_that_first_weekend_is_still_found():
    stats = shift(_weekend_dip(node_stats()), ["t1"], "mean", "2026-10-04 12:00",
                  lambda v: v * 3)
    found = detect_changepoints(pivot_node_stats(stats), utc("2026-10-03 10:00"),
                                utc("2026-10-06")).set_index(["node_id", "stat"])
    assert found["moved"].sum() == 1
    assert found.loc[("t1", "mean"), "onset"] == utc("2026-10-04 12:00")
