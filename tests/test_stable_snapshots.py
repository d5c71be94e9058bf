import pandas as pd
import pytest

import serving_world as sw
from hawkeye_dagster.analysis.stable_snapshots import latest_stable, serving_periods, stable_snapshots

UTC = "UTC"
# serving_world: two binary models m1, m2 and a regression model m3; m1's snapshots follow
# each other (m1-s1, then m1-s2 from day 3, then the incident's m1-s3)


def _judge(incident, **kwargs):
    world = sw.world(incident)
    samples = pd.concat([s.assign(model_id=m) for m, s in world.samples.items()], ignore_index=True)
    first = world.experiments[world.experiments["traffic_fraction"] > 0]
    snapshots = first.groupby(["model_id", "snapshot_id"], as_index=False)["ts"].min().rename(
        columns={"ts": "published_at"}).assign(training_run_id=None, artifact="a.pt2")
    tasks = {"m1": "binary_classification", "m2": "binary_classification", "m3": "regression"}
    return stable_snapshots(snapshots, world.experiments, samples, tasks, **kwargs).set_index(
        "snapshot_id")


def test_healthy_snapshots_that_served_a_day_are_stable():
    judged = _judge("none")
    assert judged["stable"].all(), judged[["reason"]]
    assert not judged["degraded"].any()
    assert judged.loc["m1-s2", "predecessor"] == "m1-s1"
    assert judged.loc["m1-s2", "comparison"] == "hours before"  # m1-s1 stopped when m1-s2 started
    assert judged.loc["m1-s2", "stable_since"] == sw.START + pd.Timedelta("4D")
    assert judged.loc["m1-s1", "served_hours"] == pytest.approx(72.0)


@pytest.mark.parametrize("incident", ["bad_snapshot", "traffic_ramp"])
def test_a_worse_snapshot_is_not_stable(incident):
    judged = _judge(incident)
    bad = judged.loc["m1-s3"]
    assert bad["degraded"] and not bad["stable"] and pd.isna(bad["stable_since"])
    assert bad["comparison"] == "same hours" and bad["loss"] > bad["predecessor_loss"]
    assert bad["reason"].startswith("loss")
    assert judged.drop(index="m1-s3")["stable"].all()


def test_nan_predictions_are_a_degradation():
    bad = _judge("nan_snapshot").loc["m1-s3"]
    assert bad["degraded"] and bad["nan_predictions"] > 0 and "NaN" in bad["reason"]


def test_too_short_service_or_an_attributed_incident_is_not_stable():
    as_of = sw.START + pd.Timedelta("3D 12h")
    judged = _judge("none", as_of=as_of)
    assert not judged.loc["m1-s2", "stable"]
    assert judged.loc["m1-s2", "served_hours"] == pytest.approx(12.0)
    assert judged.loc["m1-s2", "reason"] == "served 12.0 h of 24 h"
    judged = _judge("none", attributed={"m2-s1"})
    assert not judged.loc["m2-s1", "stable"] and judged.loc["m2-s1", "attributed"]


def test_latest_stable_is_as_of_a_time_oldest_first():
    history = _judge("bad_snapshot").reset_index()
    assert latest_stable(history, "m1", sw.START + pd.Timedelta("12D")) == ["m1-s1", "m1-s2"]
    # m1-s2 was published on day 3 and stable from day 4
    assert latest_stable(history, "m1", sw.START + pd.Timedelta("3D 12h")) == ["m1-s1"]
    assert latest_stable(history, "m1", sw.START + pd.Timedelta("12D"), n=1) == ["m1-s2"]
    assert latest_stable(history, "m9", sw.START + pd.Timedelta("12D")) == []


def test_serving_periods_merge_arms_and_segments():
    t = pd.Timestamp("2026-01-01", tz=UTC)
    h = pd.Timedelta("1h")
    experiments = pd.DataFrame([
        (t, "e1", "m", "s", "us", 0.5), (t + 10 * h, "e1", "m", "s", "us", 0.0),
        (t + 5 * h, "e2", "m", "s", "eu", 1.0), (t + 20 * h, "e2", "m", "s", "eu", 0.0),
        (t + 30 * h, "e1", "m", "s", "us", 0.2),
    ], columns=["ts", "experiment_id", "model_id", "snapshot_id", "segment", "traffic_fraction"])
    periods = serving_periods(experiments, t + 40 * h)
    assert periods[["start", "end"]].values.tolist() == [[t, t + 20 * h], [t + 30 * h, t + 40 * h]]
    assert periods["elapsed"].tolist() == [pd.Timedelta(0), 20 * h]


def test_first_snapshots_have_nothing_to_compare_with():
    world = sw.world("none")
    judged = _judge("none", as_of=sw.START + pd.Timedelta("2D"))
    assert (judged["comparison"] == "none").all() and judged["loss_p_value"].isna().all()
    assert judged.loc[["m1-s1", "m2-s1", "m3-s1"], "stable"].all()
    assert world.experiments["snapshot_id"].nunique() == len(judged)
