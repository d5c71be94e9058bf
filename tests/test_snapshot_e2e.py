"""Snapshot diagnosis through Dagster on simulated incidents whose answers are known, and on
healthy snapshots; the slow test runs the whole thing under ``dagster dev``."""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import requests

from hawkeye_dagster.assets.snapshots import SNAPSHOT_DIAGNOSTICS, stable_snapshots
from hawkeye_dagster.assets.training import training_partition_checks
from hawkeye_dagster.demo import DAGSTER_YAML
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.simulate import simulate
import dagster_process
from lake_factory import write_lake

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = REPO / "workspace.yaml"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """``scenario -> (lake, truth)``, each scenario simulated once, when first asked for."""
    root = tmp_path_factory.mktemp("simulated")
    lakes = {}

    def get(scenario: str):
        if scenario not in lakes:
            lake = root / scenario
            lakes[scenario] = (lake, simulate(lake, scenario=scenario, seed=0, scale="small"))
        return lakes[scenario]

    return get


def diagnose(lake, snapshot_id, out):
    """Materialize a snapshot's diagnostics; returns (report or None, {check: evaluation}, result)."""
    resources = {"telemetry": TelemetrySource(lake=str(lake)), "storage": HawkeyeStorage(root=str(out))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("snapshot", [snapshot_id])
        result = dg.materialize(SNAPSHOT_DIAGNOSTICS, partition_key=snapshot_id, instance=instance,
                                resources=resources, raise_on_error=False)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    report = out / "snapshots" / snapshot_id / "report.json"
    return (json.loads(report.read_text()) if report.exists() else None), checks, result


def _stored(out, snapshot_id, name):
    path = out / "snapshots" / snapshot_id / name
    return json.loads(path.read_text()) if name.endswith(".json") else pd.read_parquet(path)


def test_nan_snapshot_is_walked_to_its_feature_and_node(simulated, tmp_path):
    lake, truth = simulated("nan_snapshot")
    [incident] = truth["incidents"]
    snapshot = incident["entry"]["snapshot"]
    report, checks, result = diagnose(lake, snapshot, tmp_path)
    assert report["verdict"] == "bad"
    activations = _stored(tmp_path, snapshot, "activations.json")
    assert activations["origins"] == [incident["details"]["graph_node"]]
    assert activations["responsible_features"] == [incident["details"]["nan_feature"]]
    assert activations["verified"] and activations["bad_output_rows"] > 0
    assert incident["mitigation"] in report["mitigations"]
    assert incident["details"]["rollback"] in report["mitigations"]
    weights = _stored(tmp_path, snapshot, "weight_diff.parquet")
    assert weights.loc[weights["flagged"], "parameter"].tolist() == ["log_shift"]
    assert not checks["no_nonfinite_outputs"].passed and checks["training_curve_healthy"].passed
    assert not result.success  # the blocking gate failed, as it should for promotion


def test_exploding_training_fails_the_curve_gate_at_the_right_step(simulated, tmp_path):
    lake, truth = simulated("exploding_training")
    [incident] = truth["incidents"]
    snapshot = incident["root_cause"]["id"]
    report, checks, _ = diagnose(lake, snapshot, tmp_path)
    assert report["verdict"] == "bad"
    assert incident["mitigation"] in report["mitigations"]
    curve = _stored(tmp_path, snapshot, "training.json")["curve"]
    assert curve["training_run_id"] == incident["details"]["training_run_id"]
    assert curve["diverged"] and curve["exploded"]
    # it began before the loss first stood ten times its start
    assert curve["divergence_step"] <= curve["explosion_step"] <= incident["details"]["exploding_step"]
    weights = _stored(tmp_path, snapshot, "weight_diff.parquet")
    flagged = set(weights.loc[weights["flagged"], "parameter"])
    assert {"mlp.0.weight", "mlp.2.weight", "mlp.4.weight"} <= flagged
    assert not checks["training_curve_healthy"].passed
    assert not checks["no_unusual_weight_change"].passed


def test_bad_training_partition_is_ranked_first(simulated, tmp_path):
    lake, truth = simulated("bad_training_partition")
    [incident] = truth["incidents"]
    snapshot = incident["suspects"]["snapshots"][0]
    report, checks, _ = diagnose(lake, snapshot, tmp_path)
    partitions = _stored(tmp_path, snapshot, "training_partitions.parquet")
    assert partitions.loc[partitions["flagged"], "partition"].tolist() == \
        [incident["root_cause"]["id"]]
    assert report["verdict"] == "suspect" and "label rate" in report["findings"][0]
    assert checks["training_curve_healthy"].passed and checks["no_nonfinite_outputs"].passed


def test_the_partition_checks_flag_that_partition_alone(simulated, tmp_path):
    lake, truth = simulated("bad_training_partition")
    bad = truth["incidents"][0]["root_cause"]["id"]
    dataset = bad.split("/")[0]
    from hawkeye_dagster.lake.open import open_lake

    days = open_lake(lake=str(lake)).read("training_data", columns=["partition"],
                                          equals={"dataset_id": dataset})["partition"].unique()
    keys = [f"{dataset}/{d}" for d in sorted(days)]
    resources = {"telemetry": TelemetrySource(lake=str(lake)),
                 "storage": HawkeyeStorage(root=str(tmp_path))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("training_partition", keys)
        result = dg.materialize([training_partition_checks], instance=instance,
                                resources=resources, tags={
                                    "dagster/asset_partition_range_start": keys[0],
                                    "dagster/asset_partition_range_end": keys[-1]})
    assert result.success
    materializations = result.asset_materializations_for_node("training_partition_checks")
    assert len(materializations) == len(keys)  # one run, every partition
    materialization = materializations[0]
    assert materialization.metadata["flagged"].value == 1
    assert bad in materialization.metadata["flagged_partitions"].value
    day = bad.split("/")[1]
    checks = pd.read_parquet(tmp_path / "training" / dataset / day / "neighbour_checks.parquet")
    assert set(checks.loc[checks["flagged"], "subject"]) == {"label"}


def test_healthy_snapshots_pass_every_gate(simulated, tmp_path):
    lake, truth = simulated("clean")
    routine = next(i for i in truth["incidents"] if i["entry"]["kind"] == "snapshot")
    snapshot = routine["entry"]["snapshot"]
    report, checks, result = diagnose(lake, snapshot, tmp_path)
    assert result.success and report["verdict"] == "healthy" and report["findings"] == []
    assert all(c.passed for c in checks.values()) and len(checks) == 4
    assert report["mitigations"] == []
    [materialization] = result.asset_materializations_for_node("snapshot_report")
    assert "data:image/png;base64," in materialization.metadata["report"].value


def test_stable_history_excludes_the_nan_snapshot(simulated, tmp_path):
    lake, truth = simulated("nan_snapshot")
    bad = truth["incidents"][0]["entry"]["snapshot"]
    resources = {"telemetry": TelemetrySource(lake=str(lake)),
                 "storage": HawkeyeStorage(root=str(tmp_path))}
    assert dg.materialize([stable_snapshots], resources=resources).success
    history = pd.read_parquet(tmp_path / "snapshots" / "stable_snapshots.parquet")
    judged = history.set_index("snapshot_id")
    assert not judged.loc[bad, "stable"] and judged.loc[bad, "nan_predictions"] > 0
    # every other snapshot that served a day is stable
    others = judged.drop(index=bad)
    assert others.loc[others["served_hours"] >= 24, "stable"].all()


@pytest.mark.parametrize("damage", ["missing", "truncated", "pickle"])
def test_a_bad_artifact_fails_its_check_and_stops_the_diagnosis(tmp_path, damage):
    lake = write_lake(tmp_path / "lake")
    artifact = lake / "artifacts" / "ranker@2.pt2"
    if damage == "missing":
        artifact.unlink()
    elif damage == "truncated":
        artifact.write_bytes(artifact.read_bytes()[:500])
    else:
        artifact.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 10)
    report, checks, result = diagnose(lake, "ranker@2", tmp_path / "out")
    check = checks["artifact_is_valid"]
    assert not check.passed and str(artifact) in check.description
    assert report is None and not result.success
    assert result.asset_materializations_for_node("snapshot_weight_diff") == []


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"http://127.0.0.1:{port}/graphql",
                             json={"query": query, "variables": variables or {}}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]


_RUNS = """query($key: String!) { runsOrError(filter: {tags: [{key: "dagster/run_key", value: $key}]})
  { ... on Runs { results { runId status tags { key value } } } } }"""
_ALL_RUNS = """{ runsOrError(limit: 1000)
  { ... on Runs { results { status pipelineName tags { key value } } } } }"""
_REPORT = """query($key: String!) { assetNodes(assetKeys: [{path: ["snapshot_report"]}])
  { assetMaterializations(partitions: [$key]) { timestamp partition } } }"""


_DONE = ("SUCCESS", "FAILURE", "CANCELED")


@pytest.mark.slow
def test_dagster_dev_diagnoses_a_published_snapshot(simulated, tmp_path):
    """Under ``dagster dev`` (webserver + daemon, the demo's instance settings), every snapshot
    of the lake's history is diagnosed once; then a snapshot appended to the lake is found by
    the sensor, diagnosed by the launched run, and its report is materialized."""
    source, _ = simulated("clean")
    lake = tmp_path / "lake"
    shutil.copytree(source, lake)
    snapshots = pd.read_parquet(lake / "snapshots")
    latest = snapshots.sort_values("published_at").iloc[-1]
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    port = dagster_process.free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "HAWKEYE_LAKE": str(lake),
           "HAWKEYE_STORAGE": str(tmp_path / "out")}
    server = dagster_process.start(
        [sys.executable, "-m", "dagster", "dev", "-w", str(WORKSPACE),
         "-p", str(port), "-h", "127.0.0.1"], env=env, cwd=REPO, log=tmp_path / "dagster.log")
    try:
        dagster_process.wait_until_serving(port, server)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # the history, diagnosed a burst at a time
            every = _graphql(port, _ALL_RUNS)["runsOrError"]["results"]
            runs = [r for r in every if r["pipelineName"] == "snapshot_diagnostics"]
            if len(runs) >= len(snapshots) and all(r["status"] in _DONE for r in every):
                break  # and the incidents the other sensors opened are triaged
            time.sleep(5)
        else:
            pytest.fail(f"{len(runs)} of {len(snapshots)} published snapshots diagnosed")
        keys = sorted(next(t["value"] for t in r["tags"] if t["key"] == "dagster/run_key")
                      for r in runs)
        assert keys == sorted(snapshots["snapshot_id"])  # each once
        new_id = f"{latest['model_id']}-e2e"
        (lake / latest["artifact"]).parent.joinpath(f"{new_id}.pt2").write_bytes(
            (lake / latest["artifact"]).read_bytes())
        row = latest.to_frame().T.assign(
            snapshot_id=new_id, artifact=str(Path(latest["artifact"]).parent / f"{new_id}.pt2"),
            published_at=pd.Timestamp.now(tz="UTC").floor("s"))
        row.astype(snapshots.dtypes.to_dict()).to_parquet(lake / "snapshots" / "e2e.parquet")
        appeared = time.time()
        status = None
        while time.time() < appeared + 300:
            runs = _graphql(port, _RUNS, {"key": new_id})["runsOrError"]["results"]
            status = runs[0]["status"] if runs else None
            if status in _DONE:
                break
            time.sleep(1)
        materialized = _graphql(port, _REPORT, {"key": new_id})["assetNodes"][0][
            "assetMaterializations"]
        assert status == "SUCCESS" and materialized
        latency = float(materialized[0]["timestamp"]) / 1000 - appeared
        print(f"\nsnapshot row appeared -> report materialized: {latency:.1f} s")
        assert latency < 90
    finally:
        dagster_process.stop(server)
