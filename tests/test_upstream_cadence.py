"""Upstream root cause on statistics of several cadences, and decoy changes that moved nothing.

Known answers on the synthetic lineage world of :mod:`lineage_world`; each
test fails when windows assume hourly statistics or when a change at a node
is taken as a cause without its data showing it.
"""

from __future__ import annotations

import pandas as pd
import pytest
from lineage_world import lineage_tables, node_stats, shift, utc

from hawkeye_dagster.analysis.changepoints import pivot_by_cadence, series_cadence
from hawkeye_dagster.analysis.lineage_graph import build_lineage_graph
from hawkeye_dagster.analysis.upstream_rca import UpstreamSettings, upstream_root_cause

ONSET = "2026-10-11 05:00"
HEIRS = ["t1", "x1", "nf1", "nf2"]


@pytest.fixture(scope="module")
def graph():
    t = lineage_tables()
    return build_lineage_graph(t["lineage_nodes"], t["lineage_edges"], t["features"],
                               t["pipelines"])


def daily(stats: pd.DataFrame, nodes) -> pd.DataFrame:
    """The nodes' statistics as daily means at midnight (the others stay hourly)."""
    chosen = stats["node_id"].isin(list(nodes))
    days = stats[chosen].assign(ts=stats.loc[chosen, "ts"].dt.floor("D")).groupby(
        ["ts", "node_id", "stat"], as_index=False)["value"].mean()
    return pd.concat([stats[~chosen], days], ignore_index=True)


def corrupt_s1(stats: pd.DataFrame) -> pd.DataFrame:
    stats = shift(stats, ["s1"], "null_fraction", ONSET, lambda v: v * 0 + 0.4)
    return shift(stats, HEIRS, "null_fraction", "2026-10-11 06:00", lambda v: v * 0 + 0.2)


def changes(*rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ts", "node_id", "change_type", "version", "description"])


def test_each_series_cadence_is_its_median_gap_whatever_the_row_order():
    stats = daily(node_stats(), ["s1", "t1"])
    stats = stats.drop(index=stats.index[stats["node_id"].eq("x1")][::7])  # some hours missing
    cadence = series_cadence(stats.sample(frac=1.0, random_state=1))
    assert set(cadence.loc[["s1", "t1"]]) == {pd.Timedelta("1D")}
    assert set(cadence.loc[["x1", "nf1", "s2"]]) == {pd.Timedelta("1h")}
    frames = pivot_by_cadence(stats)
    assert [f.index.freq for f in frames] == [pd.Timedelta("1h"), pd.Timedelta("1D")]
    assert set(frames[1].columns.get_level_values(0)) == {"s1", "t1"}


@pytest.mark.parametrize("daily_nodes", [["s1", "s2", "s3", *HEIRS, "nf3"], ["s1", "t1"]],
                         ids=["all-daily", "mixed"])
def test_source_corruption_is_found_on_daily_and_mixed_statistics(graph, daily_nodes):
    stats = pivot_by_cadence(daily(corrupt_s1(node_stats()), daily_nodes))
    onsets = {"f1": utc("2026-10-11 07:00"), "f2": utc("2026-10-11 08:00")}
    top = upstream_root_cause(graph, onsets, stats).candidates.iloc[0]
    assert (top["kind"], top["id"]) == ("lineage_node", "s1") and top["origin"]


def test_daily_windows_are_long_enough_for_the_detector():
    hourly, day = UpstreamSettings(), UpstreamSettings().for_cadence(pd.Timedelta("1D"))
    assert hourly.for_cadence(pd.Timedelta("1h")) == hourly
    assert day.lag >= (day.min_buckets + day.slack_buckets) * pd.Timedelta("1D")
    assert day.baseline >= pd.Timedelta("7D") and day.lead >= pd.Timedelta("2D")


def test_clean_daily_statistics_blame_nothing(graph):
    stats = pivot_by_cadence(daily(node_stats(), ["s1", "t1", "x1"]))
    found = upstream_root_cause(graph, {"f1": utc(ONSET)}, stats).candidates
    assert not found["moved"].any() and (found["kind"] == "feature").all()


def _x1_breaks_beside_a_change_at(graph, unmeasured: str) -> pd.DataFrame:
    """Candidates when x1 (with its own code change) breaks, and ``unmeasured``, a node
    without statistics, had a config change shortly before."""
    stats = node_stats()
    stats = shift(stats[stats["node_id"] != unmeasured], ["x1", "nf1", "nf2"], "mean", ONSET,
                  lambda v: v * 1000)
    return upstream_root_cause(graph, {"f1": utc(ONSET)}, pivot_by_cadence(stats), changes(
        (utc("2026-10-11 02:00"), unmeasured, "config", "d1", "new worker pool"),
        (utc("2026-10-11 04:50"), "x1", "code", "v2", "seconds -> milliseconds"))).candidates


def test_a_change_at_a_node_without_statistics_whose_measured_output_stayed_is_no_cause(graph):
    """s2 (no statistics) feeds t1, which did not move: its change moved nothing; x1's did."""
    found = _x1_breaks_beside_a_change_at(graph, "s2")
    top = found.iloc[0]
    assert (top["kind"], top["id"], top["version"]) == ("lineage_change", "x1", "v2")
    assert "s2" not in set(found["id"])


def test_a_move_inferred_above_does_not_outrank_a_measured_move_with_its_own_change(graph):
    """t1 has no statistics and a change before the onset; x1 moved with its own change."""
    top = _x1_breaks_beside_a_change_at(graph, "t1").iloc[0]
    assert (top["kind"], top["id"]) == ("lineage_change", "x1") and top["origin"]
