"""Model to snapshots: a worse snapshot, all snapshots alike, or a traffic change."""

from __future__ import annotations

import pandas as pd
import pytest

import serving_world as world
from hawkeye_dagster.analysis.model_isolation import bucket_quality
from hawkeye_dagster.analysis.rollout import (
    isolate_snapshots, peer_gap, traffic_changes, traffic_timeline)

GRID = pd.date_range(world.START, periods=world.DAYS * 24, freq="h")


def finding(incident: str, seed: int = 0, onset=world.ONSET):
    w = world.world(incident, seed)
    quality = bucket_quality(w.samples["m1"], "binary_classification", pd.Timedelta("1h"),
                             by=["snapshot_id"])
    experiments = w.experiments[w.experiments["model_id"] == "m1"]
    return isolate_snapshots(quality, experiments, GRID, onset, GRID[-1])


@pytest.mark.parametrize("seed", [0, 1])
def test_features_incident_degrades_all_snapshots_alike(seed):
    f = finding("features", seed)
    assert f.verdict == "all_snapshots" and f.suspects == []
    assert f.snapshots.set_index("snapshot_id").loc["m1-s2", "self_z"] > 5


@pytest.mark.parametrize("incident", ["bad_snapshot", "nan_snapshot"])
@pytest.mark.parametrize("seed", [0, 1])
def test_new_bad_snapshot_is_the_suspect(incident, seed):
    f = finding(incident, seed)
    assert (f.verdict, f.suspects) == ("snapshot", ["m1-s3"])
    assert f.traffic_experiment is None
    assert f.previous_snapshot == "m1-s2"
    table = f.snapshots.set_index("snapshot_id")
    assert table.loc["m1-s3", "peer_z"] > 3 > table.loc["m1-s2", "peer_z"]


@pytest.mark.parametrize("seed", [0, 1])
def test_ramp_of_an_established_worse_arm_is_a_traffic_change(seed):
    f = finding("traffic_ramp", seed)
    assert (f.verdict, f.suspects) == ("snapshot", ["m1-s3"])
    assert f.traffic_experiment == "exp-m1-s3"
    assert f.snapshots.set_index("snapshot_id").loc["m1-s3", "peer_z_before"] > 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_rollout_explains_nothing(seed):
    f = finding("none", seed)
    assert (f.verdict, f.suspects, f.traffic_experiment) == ("none", [], None)


def test_peer_z_is_zero_mean_between_equal_snapshots():
    w = world.world("none", 5)
    samples = w.samples["m1"].copy()
    # split the one serving snapshot into two equal arms at random
    samples.loc[samples.index % 2 == 0, "snapshot_id"] = "m1-twin"
    quality = bucket_quality(samples, "binary_classification", pd.Timedelta("1h"),
                             by=["snapshot_id"])
    z = peer_gap(quality, GRID[GRID >= world.START + pd.Timedelta("4D")])["z"]
    assert z.abs().max() < 3
    assert z["m1-twin"] == pytest.approx(-z["m1-s2"], rel=0.2)


def test_traffic_timeline_and_changes_follow_the_experiments():
    exp = world.experiments("bad_snapshot")
    m1 = exp[exp["model_id"] == "m1"]
    timeline = traffic_timeline(m1, GRID)
    assert timeline.loc[world.START, "exp-m1-s1"] == 1.0
    assert timeline.loc[world.ONSET - pd.Timedelta("1h"), "exp-m1-s3"] == 0.0
    assert timeline.loc[world.ONSET + pd.Timedelta("13h"), "exp-m1-s3"] == 0.5
    assert (timeline.sum(axis=1) <= 1.0 + 1e-9).all()
    changes = traffic_changes(m1)
    s3 = changes[changes["experiment_id"] == "exp-m1-s3"]
    assert list(zip(s3["before"], s3["after"])) == [(0.0, 0.1), (0.1, 0.5), (0.5, 1.0)]
