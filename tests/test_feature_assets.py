"""The features assets materialized with a real Dagster instance over a simulated incident."""

import warnings

import dagster as dg
import pandas as pd
import pytest

from hawkeye_dagster.assets import features, snapshots
from hawkeye_dagster.assets.partitions import model_partitions, snapshot_partitions
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.sensors.feature_alerts import HEALTH_ALERTS_DIR, AlertCursor

warnings.filterwarnings("ignore", category=dg.BetaWarning)
#: a transform change scales four features of this model by 100 from the onset on
MODEL = "mp_value"


@pytest.fixture(scope="module")
def world(simulated, tmp_path_factory):
    lake, truth = simulated("transform_change")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(model_partitions.name, [MODEL])
    resources = {"telemetry": TelemetrySource(lake=str(lake)),
                 "storage": HawkeyeStorage(root=str(tmp_path_factory.mktemp("storage")))}
    config = {"days": 5, "limits": {"seller rating": {"null_fraction_max": 0.5}}}
    result = dg.materialize([features.feature_reference], partition_key=MODEL, instance=instance,
                            resources=resources,
                            run_config={"ops": {"feature_reference": {"config": config}}})
    assert result.success
    return instance, resources, truth["incidents"][0]


def _range_run(instance, resources, first: str, last: str):
    """One run over a range of (date, model) partitions, as a single-run backfill makes it."""
    job = dg.Definitions(assets=[features.feature_reference, features.feature_stats,
                                 features.feature_drift], jobs=[features.feature_monitoring_job],
                         resources=resources).resolve_job_def("feature_monitoring")
    return job.execute_in_process(instance=instance, tags={
        "dagster/asset_partition_range_start": f"{first}|{MODEL}",
        "dagster/asset_partition_range_end": f"{last}|{MODEL}"})


def test_reference_is_stored_with_its_limits(world):
    _, resources, _ = world
    storage = resources["storage"]
    reference = features._reference(storage, MODEL)
    assert len(reference.stats.hours) == 5 * 24
    limits = storage.read_parquet(features.STORE, MODEL, "thresholds.parquet").set_index("column")
    assert "prediction" not in limits.index
    assert limits.loc["seller rating", "null_fraction_max"] == 0.5  # set by hand
    assert (limits.drop(index="seller rating")["null_fraction_max"] < 0.5).all()  # learned


def test_a_day_of_statistics_checks_and_drift(world):
    instance, resources, incident = world
    storage = resources["storage"]
    onset = pd.Timestamp(incident["onset"])
    days = [f"{onset + pd.Timedelta(days=d):%Y-%m-%d}" for d in (-1, 0, 1)]
    result = _range_run(instance, resources, days[0], days[-1])
    assert result.success
    for day in days:
        assert storage.exists(features.STORE, MODEL, "stats", f"{day}.parquet")
        drift = storage.read_parquet(features.STORE, MODEL, "drift", f"{day}.parquet")
        assert "prediction" in set(drift["column"])
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert set(checks) == set(features.CHECK_DESCRIPTIONS)
    assert not all(checks.values())  # the corrupted features fail their health checks

    # the alerts are where the feature alert sensor reads them, in the contract's shape
    health = ParquetLake(str(storage.path(HEALTH_ALERTS_DIR).parent))
    alerts = AlertCursor().read_new("health", health)
    corrupted = set(incident["suspects"]["features"])
    after_onset = alerts[alerts["ts"] >= onset.floor("h")]
    assert set(after_onset["feature_name"]) & corrupted
    assert set(alerts["feature_name"]) <= corrupted  # no alert on a healthy feature
    assert (alerts["ts"] >= onset.floor("h")).all()


def test_ranking_explains_the_incident(world):
    instance, resources, incident = world
    config = {"onset": incident["onset"], "end": incident["window"]["end"]}
    result = dg.materialize([features.feature_ranking], partition_key=MODEL, instance=instance,
                            resources=resources,
                            run_config={"ops": {"feature_ranking": {"config": config}}})
    metadata = result.asset_materializations_for_node("feature_ranking")[0].metadata
    assert metadata["explained"].value
    ranking = resources["storage"].read_parquet(features.STORE, MODEL, "ranking.parquet")
    top = ranking.loc[ranking["significant"], "feature"]
    assert set(top) <= set(incident["suspects"]["features"]) and len(top)


def test_importance_of_a_snapshot_against_its_stable_predecessor(world):
    instance, resources, _ = world
    snapshot = f"{MODEL}-v3"
    instance.add_dynamic_partitions(snapshot_partitions.name, [snapshot])
    result = dg.materialize([snapshots.snapshot_baseline, snapshots.snapshot_importance_change],
                            partition_key=snapshot, instance=instance, resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("snapshot_importance_change")[0].metadata
    if "skipped" in metadata:
        pytest.fail(metadata["skipped"].value)
    storage = resources["storage"]
    table = storage.read_parquet(snapshots.STORE, snapshot, "importance.parquet")
    assert {"feature", "ratio", "ratio_low", "ratio_high", "p_value", "significant",
            "summary"} <= set(table.columns)
    assert len(table) == len(set(table["feature"])) > 0
    assert storage.read_json(snapshots.STORE, snapshot, "importance.json")["reference"]
    assert "plot" in metadata and storage.exists(snapshots.STORE, snapshot, "importance.png")
