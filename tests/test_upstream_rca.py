"""Upstream root cause on synthetic lineage worlds whose answer is known, and on clean ones."""

from __future__ import annotations


import jsonschema
import pandas as pd
import pytest
from lineage_world import lineage_tables, node_stats, shift, utc

from hawkeye_dagster.analysis.changepoints import pivot_node_stats
from hawkeye_dagster.analysis.lineage_graph import build_lineage_graph
from hawkeye_dagster.analysis.upstream_rca import upstream_root_cause
from hawkeye_dagster.errors import UnknownIdError
from hawkeye_dagster.triage.report import report_schema

SCHEMA = report_schema()
ONSET = "2026-10-11 05:00"


@pytest.fixture(scope="module")
def graph():
    t = lineage_tables()
    return build_lineage_graph(t["lineage_nodes"], t["lineage_edges"], t["features"],
                               t["pipelines"])


def _changes(*rows):
    return pd.DataFrame(rows, columns=["ts", "node_id", "change_type", "version", "description"])


def _valid_root_causes(analysis):
    entries = analysis.root_causes()
    jsonschema.validate(entries, SCHEMA["properties"]["root_causes"])
    return entries


def _corrupt_s1(stats):
    """s1's null fraction jumps to 0.4; everything below it inherits a diluted 0.2 an hour later."""
    stats = shift(stats, ["s1"], "null_fraction", ONSET, lambda v: v * 0 + 0.4)
    return shift(stats, ["t1", "x1", "nf1", "nf2"], "null_fraction", "2026-10-11 06:00",
                 lambda v: v * 0 + 0.2)


def test_source_corruption_is_traced_to_the_source_not_its_heirs(graph):
    stats = pivot_node_stats(_corrupt_s1(node_stats()))
    onsets = {"f1": utc("2026-10-11 07:00"), "f2": utc("2026-10-11 08:00")}
    analysis = upstream_root_cause(graph, onsets, stats)
    top = analysis.candidates.iloc[0]
    assert (top["kind"], top["id"]) == ("lineage_node", "s1")
    assert top["confidence"] > 0.9 and top["explains"] == 2 and top["origin"]
    assert top["stat"] == "null_fraction" and top["after"] == pytest.approx(0.4)
    heirs = analysis.candidates.set_index("id").loc[["t1", "x1", "nf1", "nf2"]]
    assert not heirs["origin"].any()
    assert (heirs["confidence"] < top["confidence"]).all()
    assert analysis.paths["s1"] == {"f1": ["s1", "t1", "x1", "nf1"], "f2": ["s1", "t1", "x1", "nf2"]}
    assert analysis.upstream_moved and "s1" in analysis.finding()
    entry = _valid_root_causes(analysis)[0]
    assert entry["kind"] == "lineage_node" and "null_fraction of s1 rose" in entry["summary"]


def test_transform_change_is_the_cause_with_its_version(graph):
    stats = shift(node_stats(), ["x1", "nf1", "nf2"], "mean", ONSET, lambda v: v * 1000)
    changes = _changes((utc("2026-10-11 04:10"), "x1", "code", "v2", "seconds -> milliseconds"),
                       (utc("2026-10-11 04:00"), "t1", "config", "c7", "no-op"))
    analysis = upstream_root_cause(graph, {"f1": utc(ONSET)}, pivot_node_stats(stats), changes)
    top = analysis.candidates.iloc[0]
    assert (top["kind"], top["id"], top["version"]) == ("lineage_change", "x1", "v2")
    assert top["confidence"] > 0.9
    assert "t1" not in set(analysis.candidates["id"])        # its change moved nothing
    entry = _valid_root_causes(analysis)[0]
    assert entry["version"] == "v2" and "seconds -> milliseconds" in entry["summary"]


def test_change_at_a_node_without_statistics_explains_what_moved_below_it(graph):
    stats = node_stats()
    stats = stats[stats["node_id"] != "x1"]
    stats = shift(stats, ["nf1", "nf2"], "mean", "2026-10-11 06:00", lambda v: v * 1000)
    changes = _changes((utc("2026-10-11 05:30"), "x1", "config", "v9", "scale factor"))
    analysis = upstream_root_cause(graph, {"f1": utc("2026-10-11 06:00"),
                                           "f2": utc("2026-10-11 06:00")},
                                   pivot_node_stats(stats), changes)
    top = analysis.candidates.iloc[0]
    assert (top["kind"], top["id"], top["version"]) == ("lineage_change", "x1", "v9")


def test_a_change_long_before_the_move_is_not_blamed(graph):
    stats = shift(node_stats(), ["x1", "nf1"], "mean", ONSET, lambda v: v * 1000)
    changes = _changes((utc("2026-10-05 00:00"), "x1", "code", "old", "last week's release"))
    top = upstream_root_cause(graph, {"f1": utc(ONSET)}, pivot_node_stats(stats),
                              changes).candidates.iloc[0]
    assert (top["kind"], top["id"]) == ("lineage_node", "x1")


def test_shared_ancestor_outranks_a_node_that_explains_less(graph):
    stats = _corrupt_s1(node_stats())
    stats = shift(stats, ["s3", "nf3"], "null_fraction", ONSET, lambda v: v * 0 + 0.4)
    onsets = dict.fromkeys(["f1", "f2", "f3"], utc("2026-10-11 07:00"))
    ranked = upstream_root_cause(graph, onsets, pivot_node_stats(stats)).candidates
    origins = ranked[ranked["origin"]]
    assert list(origins["id"]) == ["s1", "s3"]
    assert origins.iloc[0]["explains"] == 2 and origins.iloc[1]["explains"] == 1


def test_a_node_that_moved_after_the_feature_is_not_the_cause(graph):
    stats = shift(node_stats(), ["nf1"], "mean", ONSET, lambda v: v * 3)
    stats = shift(stats, ["s2"], "row_count", "2026-10-11 20:00", lambda v: v * 3)
    analysis = upstream_root_cause(graph, {"f1": utc(ONSET)}, pivot_node_stats(stats))
    assert not analysis.upstream_moved
    top = analysis.candidates.iloc[0]
    assert (top["kind"], top["id"]) == ("feature", "f1") and top["moved"]
    assert "s2" not in set(analysis.candidates["id"])
    assert "nothing upstream" in analysis.finding()


@pytest.mark.parametrize("seed", range(3))
def test_clean_world_has_nothing_above_threshold(graph, seed):
    changes = _changes((utc("2026-10-11 01:00"), "t1", "config", "c8", "harmless"))
    analysis = upstream_root_cause(graph, {"f1": utc(ONSET), "f3": utc(ONSET)},
                                   pivot_node_stats(node_stats(seed=seed)), changes)
    assert not analysis.upstream_moved
    assert set(analysis.candidates["kind"]) == {"feature"}
    assert (analysis.candidates["confidence"] < 0.2).all()
    assert {e["id"] for e in _valid_root_causes(analysis)} == {"f1", "f3"}


def test_unknown_feature_is_named(graph):
    with pytest.raises(UnknownIdError, match="no such"):
        upstream_root_cause(graph, {"no such": utc(ONSET)}, pivot_node_stats(node_stats()))
