"""Automation from the start: the sensor runs by default, the feature assets backfill the lake's
days by themselves, the daily partitions start at the lake's first day, and the statistics need
no reference materialized by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg

from hawkeye_dagster.assets import features
from hawkeye_dagster.assets.partitions import model_partitions, served_days
from hawkeye_dagster.definitions import AUTOMATION_SENSOR, build_defs
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from lake_factory import DAYS, sql_copy, write_lake

warnings.filterwarnings("ignore", category=dg.BetaWarning)
REPO = Path(__file__).resolve().parents[1]
AUTOMATED = {"feature_reference", "feature_stats", "feature_drift", "feature_ranking",
             "lineage_graph", "stable_snapshots"}

#: run with the definitions loaded for a lake, as `dagster dev` loads them: two automation
#: ticks over a fresh instance, a third after the references and some statistics materialized
TICKS = """
import json, sys, tempfile, warnings
warnings.filterwarnings("ignore")
import dagster as dg
from hawkeye_dagster.assets.partitions import daily_partitions
from hawkeye_dagster.definitions import defs

def requested(result):
    found = {k.to_user_string(): sorted(p or "" for p in result.get_requested_partitions(k))
             for k in defs.resolve_asset_graph().get_all_asset_keys()}
    return {k: v for k, v in found.items() if v}

out = {"start": daily_partitions.start.strftime("%Y-%m-%d")}
if sys.argv[1:]:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("model", sys.argv[1:])
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                   cursor=first.cursor)
        done = first.get_requested_partitions(dg.AssetKey("feature_stats"))
        made = [("feature_reference", m) for m in sys.argv[1:]]
        for asset, key in made + [("feature_stats", k) for k in sorted(done)[:2]]:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                  cursor=second.cursor)
        out.update(first=requested(first), second=requested(second), third=requested(third),
                   stats_done=sorted(done)[:2])
print(json.dumps(out))
"""


def _load(lake: Path, storage: Path, *models: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("HAWKEYE_SQL_URL", "HAWKEYE_START_DATE")}
    environ.update(HAWKEYE_LAKE=str(lake), HAWKEYE_STORAGE=str(storage), **env)
    done = subprocess.run([sys.executable, "-c", TICKS, *models], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_automation_sensor_runs_by_default_over_the_automated_assets(tmp_path):
    defs = build_defs({"telemetry": TelemetrySource(lake=str(tmp_path / "lake")),
                       "storage": HawkeyeStorage(root=str(tmp_path / "out"))})
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def(AUTOMATION_SENSOR)
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    targets = {k.to_user_string() for k in sensor.asset_selection.resolve(repo.asset_graph)}
    assert targets == AUTOMATED
    assert "default_automation_condition_sensor" not in {s.name for s in repo.sensor_defs}


def test_served_days_come_from_metadata_of_parquet_and_sql_lakes(tmp_path):
    lake = open_lake(lake=str(write_lake(tmp_path / "lake")))
    assert served_days(lake) == (DAYS[0], DAYS[-1])
    with sql_copy(lake, "sqlite", tmp_path) as reader:
        assert served_days(reader) == (DAYS[0], DAYS[-1])


def test_partitions_start_at_the_lake_and_the_lake_days_backfill_once(simulated, tmp_path):
    lake, _ = simulated("transform_change")
    first_day, last_day = served_days(open_lake(lake=str(lake)))
    models = ["mp_value", "ads_ctr"]
    ticks = _load(lake, tmp_path, *models)
    assert ticks["start"] == first_day == "2026-10-01"

    first = ticks["first"]
    assert set(first) == AUTOMATED - {"feature_drift"}  # drift follows the statistics
    assert first["feature_reference"] == first["feature_ranking"] == sorted(models)
    days = sorted({key.split("|")[0] for key in first["feature_stats"]})
    assert days[0] == first_day and days[-1] == last_day  # no empty day after the lake's end
    assert len(first["feature_stats"]) == len(days) * len(models)
    assert first["lineage_graph"] == first["stable_snapshots"] == [""]
    assert ticks["second"] == {}  # nothing is requested twice
    assert ticks["third"] == {"feature_drift": ticks["stats_done"]}


def test_the_start_date_can_still_be_set(simulated, tmp_path):
    lake, _ = simulated("transform_change")
    assert _load(lake, tmp_path, HAWKEYE_START_DATE="2026-09-15")["start"] == "2026-09-15"


def test_feature_stats_materialize_without_a_reference(simulated, tmp_path):
    lake, truth = simulated("transform_change")
    model, day = "mp_value", truth["incidents"][0]["onset"][:10]
    resources = _resources(lake, tmp_path)
    with dg.instance_for_test() as instance:
        result = _materialize_stats(instance, resources, day, model)
        assert result.success
        reference = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("feature_reference"),
                                  asset_partitions=[model]), limit=1).records
    assert reference and reference[0].run_id == result.run_id
    assert reference[0].asset_materialization.metadata["window"].value.startswith("2026-10-01")
    stats = _materialization(result, "feature_stats").metadata
    assert stats["partitions"].value == 1 and stats["rows"].value > 0
    assert resources["storage"].exists(features.STORE, model, "stats", f"{day}.parquet")


def test_a_model_that_never_served_has_no_statistics(simulated, tmp_path):
    lake, model = simulated("transform_change")[0], "no such model"
    with dg.instance_for_test() as instance:
        result = _materialize_stats(instance, _resources(lake, tmp_path), "2026-10-03", model)
    assert result.success
    assert _materialization(result, "feature_stats").metadata["partitions"].value == 0


def _resources(lake, root) -> dict:
    return {"telemetry": TelemetrySource(lake=str(lake)), "storage": HawkeyeStorage(root=str(root))}


def _materialize_stats(instance, resources: dict, day: str, model: str):
    """``feature_stats`` of one (day, model) on a fresh instance: no reference materialized."""
    instance.add_dynamic_partitions(model_partitions.name, [model])
    return dg.materialize([features.feature_stats], partition_key=f"{day}|{model}",
                          instance=instance, resources=resources)


def _materialization(result, asset: str) -> dg.AssetMaterialization:
    """The run's materialization of ``asset`` (its step may record others, as the reference)."""
    [found] = [m for m in result.asset_materializations_for_node(asset)
               if m.asset_key == dg.AssetKey(asset)]
    return found
