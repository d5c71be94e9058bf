"""The simulator's mess factors: each changes the lake the way it says, and nothing else.

One lake carries every factor but ``daily_stats`` (``mixed_cadence`` has both
cadences; the daily pooling is checked on arrays). Tables are read through the
project's reader (the varied encodings are other tests' business).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.simulate import FACTORS, simulate
from hawkeye_dagster.simulate.measure import stat_rows

MESS = tuple(f for f in FACTORS if f != "daily_stats")


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    lake = tmp_path_factory.mktemp("messy") / "lake"
    return lake, simulate(lake, scenario="upstream_corruption", seed=3, factors=MESS)


def read(lake, table: str) -> pd.DataFrame:
    return open_lake(lake=str(lake)).read(table)


def incident(truth: dict, name: str) -> dict:
    return next(i for i in truth["incidents"] if i["name"] == name)


def graph_of(lake) -> nx.DiGraph:
    edges = read(lake, "lineage_edges")
    return nx.DiGraph(list(zip(edges["upstream_id"], edges["downstream_id"])))


def test_truth_names_the_factors_and_unknown_ones_are_refused(messy, tmp_path):
    _, truth = messy
    assert tuple(truth["factors"]) == MESS
    with pytest.raises(ValueError, match="unknown factor"):
        simulate(tmp_path / "a", scenario="clean", factors=["tidy"])
    with pytest.raises(ValueError, match="demo"):
        simulate(tmp_path / "b", scenario="demo", factors=["weak"])


def test_weak_incident_breaks_a_quarter_to_half_of_the_rows(messy):
    details = incident(messy[1], "upstream_corruption")["details"]
    assert 0.1 <= details["broken_fraction"] <= 0.2


def test_late_labels_arrive_a_day_or_more_late_and_never_for_the_regression_model(messy):
    lake, truth = messy
    samples = read(lake, "serving_samples")
    tasks = read(lake, "models").drop_duplicates("model_id").set_index("model_id")["task"]
    end = pd.Timestamp(truth["end"])
    for model_id, rows in samples.groupby("model_id"):
        labelled = rows["label"].notna()
        if tasks[model_id] == "regression":
            assert not labelled.any()
        else:
            assert not labelled[rows["ts"] > end - pd.Timedelta("24h")].any()
            assert labelled[rows["ts"] < end - pd.Timedelta("4D")].mean() > 0.9


def test_mixed_cadence_and_missing_statistics(messy):
    lake, _ = messy
    stats = read(lake, "lineage_node_stats")
    nodes = read(lake, "lineage_nodes").set_index("node_id")["kind"]
    per_node = stats.groupby("node_id")["ts"].agg(["nunique", lambda t: (t.dt.hour == 0).all()])
    hourly, daily = per_node["nunique"] == 14 * 24, per_node["nunique"] == 14
    assert (hourly | daily).all() and hourly.sum() > 5 and daily.sum() > 5
    assert per_node.iloc[:, 1][daily].all()
    intermediate = nodes[nodes.isin(["table", "transform"])].index
    missing = ~intermediate.isin(per_node.index)
    assert 0.25 <= missing.mean() <= 0.55
    assert nodes[~nodes.isin(["table", "transform"])].index.isin(per_node.index).all()


def test_decoy_changes_land_near_the_onset_at_nodes_the_incident_does_not_move(messy):
    lake, truth = messy
    found = incident(truth, "upstream_corruption")
    onset = pd.Timestamp(found["onset"])
    changes = read(lake, "lineage_changes")
    near = changes[(changes["ts"] > onset - pd.Timedelta("7h")) & (changes["ts"] < onset)]
    graph = graph_of(lake)
    source = found["root_cause"]["id"]
    moving = {source} | nx.descendants(graph, source)
    assert len(near) == 3 and not near["node_id"].isin(moving).any()
    features = {f"feat:{f}" for f in found["suspects"]["features"]}
    above = set().union(*(nx.ancestors(graph, f) for f in features))
    assert near["node_id"].isin(above).sum() >= 1


def test_routine_snapshot_of_the_incident_model_ramps_hours_before_the_onset(messy):
    lake, truth = messy
    found = incident(truth, "upstream_corruption")
    onset = pd.Timestamp(found["onset"])
    snapshots = read(lake, "snapshots")
    model = found["suspects"]["models"][0]
    mine = snapshots[snapshots["model_id"] == model]
    lead = onset - mine["published_at"]
    assert ((lead >= pd.Timedelta("2h")) & (lead <= pd.Timedelta("8h"))).sum() == 1


def test_external_dip_lowers_requests_and_volume_together_and_is_no_issue(messy):
    lake, truth = messy
    dip = incident(truth, "external_dip")
    assert dip["verdict"] == "no_issue" and dip["root_cause"] is None
    product, segment = dip["entry"]["product"], dip["entry"]["segment"]
    models = read(lake, "models")
    hit = models["model_id"].isin(incident(truth, "upstream_corruption")["suspects"]["models"])
    assert product not in set(models.loc[hit, "product"])
    start, end = pd.Timestamp(dip["details"]["dip_start"]), pd.Timestamp(dip["details"]["dip_end"])
    week = pd.Timedelta("7D")
    samples = read(lake, "serving_samples")
    samples = samples[samples["segment"] == segment]
    topline = read(lake, "topline_metrics")
    volume = topline[(topline["product"] == product) & (topline["segment"] == segment)
                     & ~topline["metric"].str.endswith("_lower_is_better")].set_index("ts")["value"]

    def ratio(series_ts: pd.Series) -> float:
        during = ((series_ts >= start) & (series_ts < end)).sum()
        before = ((series_ts >= start - week) & (series_ts < end - week)).sum()
        return during / before

    volume_ratio = volume[start:end - pd.Timedelta("1h")].sum() / \
        volume[start - week:end - week - pd.Timedelta("1h")].sum()
    factor = dip["details"]["demand_factor"]
    assert volume_ratio == pytest.approx(factor, abs=0.04)
    assert ratio(samples["ts"]) == pytest.approx(factor, abs=0.08)


def test_daily_pooling_keeps_counts_nulls_and_moments():
    rng = np.random.default_rng(0)
    hours, nodes = 48, 3
    rows = rng.integers(50, 100, (hours, nodes)).astype(float)
    null = rng.uniform(0, 0.2, (hours, nodes))
    mean, std = rng.normal(size=(hours, nodes)), rng.uniform(0.5, 2, (hours, nodes))
    stats = {"row_count": rows, "null_fraction": null, "mean": mean, "std": std}
    out = pd.DataFrame(stat_rows(["a", "b", "c"], stats, {"b", "c"}, {"c"}))
    assert set(out["node_id"]) == {"a", "b"}
    daily = out[out["node_id"] == "b"].pivot(index="ts", columns="stat", values="value")
    assert list(daily.index) == [0.0, 86400.0]
    present = rows[:24, 1] * (1 - null[:24, 1])
    assert daily["row_count"].iloc[0] == rows[:24, 1].sum()
    assert daily["null_fraction"].iloc[0] == pytest.approx(1 - present.sum() / rows[:24, 1].sum())
    pooled_mean = (present * mean[:24, 1]).sum() / present.sum()
    assert daily["mean"].iloc[0] == pytest.approx(pooled_mean)
    second = (present * (std[:24, 1] ** 2 + mean[:24, 1] ** 2)).sum() / present.sum()
    assert daily["std"].iloc[0] == pytest.approx(np.sqrt(second - pooled_mean ** 2))
    assert len(out[out["node_id"] == "a"]) == 4 * hours
