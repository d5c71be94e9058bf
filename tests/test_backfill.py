"""Backfills as data engineers run them: the README's commands, the UI's GraphQL mutation
under a real ``dagster dev``, reruns, and bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import requests
from dagster._core.storage.dagster_run import RunsFilter

import dagster_process
import lake_factory
from hawkeye_dagster.assets.partitions import lake_partition_keys
from hawkeye_dagster.cli import main
from hawkeye_dagster.lake.open import open_lake

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FACTORY_DAYS = ("2026-03-01", "2026-03-02")
LAUNCH = """mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  }
}"""


@pytest.fixture(scope="module")
def factory_lake(tmp_path_factory) -> Path:
    lake = tmp_path_factory.mktemp("factory") / "lake"
    lake_factory.write_lake(lake)
    return lake


def _env(tmp_path: Path, lake: Path) -> dict[str, str]:
    """A fresh DAGSTER_HOME and outputs folder, watching ``lake``."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAWKEYE_", "DAGSTER_"))}
    return {**env, "DAGSTER_HOME": str(home), "HAWKEYE_LAKE": str(lake),
            "HAWKEYE_HOME": str(tmp_path / "home"), "PATH": f"{BIN}:{env['PATH']}"}


def _instance(env: dict[str, str]) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(env["DAGSTER_HOME"])


def _backfill(env: dict, lake: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hawkeye-dagster"), "backfill", "--lake", str(lake), *args],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_lake_partition_keys(factory_lake):
    keys = lake_partition_keys(open_lake(lake=str(factory_lake)))
    assert keys["model"] == ["ads ctr.v2-ü", "ranker"]
    assert keys["snapshot"] == ["ads@1", "ranker@1", "ranker@2"]
    assert all("/" in k for k in keys["training_partition"]) and keys["training_partition"]
    assert keys["incident"] == []


def _status(argv: list[str]) -> int:
    """The exit status of ``hawkeye-dagster argv`` (argparse exits, commands return)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_bad_input_exits_2_naming_the_option(factory_lake, monkeypatch, capsys, tmp_path):
    for name, value in _env(tmp_path, factory_lake).items():
        monkeypatch.setenv(name, value)
    cases = [(["--start", "2026-03-32", "--end", "2026-03-02"], "--start"),
             (["--start", "2026-03-01"], "--end"),
             (["--start", "2026-03-02", "--end", "2026-03-01"], "--end"),
             (["--start", "2026-03-01", "--end", "2026-03-02", "--models", "nope"], "--models"),
             (["--start", "2026-03-01", "--end", "2026-03-02", "--assets", "reports"],
              "--assets")]
    for args, option in cases:
        assert _status(["backfill", "--lake", str(factory_lake), *args]) == 2, args
        assert option in capsys.readouterr().err.splitlines()[-1], args


@pytest.mark.slow
def test_readme_backfill_commands(simulated, tmp_path):
    """The README's backfill lines, verbatim, on a fresh DAGSTER_HOME and the demo lake."""
    lake, _ = simulated("demo")
    text = (REPO / "README.md").read_text()
    bullet = text[text.index("- **Backfills**"):text.index("- **Upgrades**")]
    commands = [c for c in re.findall(r"`([^`]+)`", bullet)
                if c.startswith(("hawkeye-dagster backfill", "dagster asset materialize"))]
    assert len(commands) == 3, commands
    env = _env(tmp_path, lake)
    for command in commands:
        done = subprocess.run(command, shell=True, env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    with _instance(env) as instance:
        stats = instance.get_materialized_partitions(dg.AssetKey("feature_stats"))
        assert {"2026-10-14|ads_ctr", "2026-10-15|ads_ctr"} <= stats
        assert {"2026-10-10", "2026-10-11", "2026-10-12"} <= instance.get_materialized_partitions(
            dg.AssetKey("lineage_node_changepoints"))
        assert instance.get_backfills()


@pytest.mark.slow
def test_rerun_is_idempotent(factory_lake, tmp_path):
    """Dagster reruns every partition of a backfill, even done ones: the second run does the
    same work once more and leaves the same outputs, and no reference is recomputed."""
    env = _env(tmp_path, factory_lake)
    args = ["--start", FACTORY_DAYS[0], "--end", FACTORY_DAYS[1], "--assets", "all", "--wait"]
    first = _backfill(env, factory_lake, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    outputs = Path(env["HAWKEYE_HOME"]) / "outputs"

    def stored() -> dict[Path, pd.DataFrame]:
        return {p.relative_to(outputs): pd.read_parquet(p) for p in outputs.rglob("*.parquet")
                if "stats" in p.parts or p.name == "reference.parquet"}

    before = stored()
    second = _backfill(env, factory_lake, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    after = stored()
    assert after.keys() == before.keys() and before
    for path, frame in before.items():
        pd.testing.assert_frame_equal(after[path], frame, obj=str(path))
    with _instance(env) as instance:
        first_id, second_id = (b.backfill_id for b in reversed(instance.get_backfills()))
        runs = [instance.get_runs(filters=RunsFilter.for_backfill(b))
                for b in (first_id, second_id)]
        assert len(runs[0]) == len(runs[1]) and all(
            r.status == dg.DagsterRunStatus.SUCCESS for rs in runs for r in rs)
        references = instance.fetch_materializations(dg.AssetKey("feature_reference"),
                                                     limit=100).records
        assert len(references) == 2  # once per model, by the first statistics run


@pytest.mark.slow
def test_ui_backfill_under_dagster_dev(factory_lake, tmp_path):
    """The UI's ``launchPartitionBackfill`` of the statistics and drift of every model's days,
    on a fresh instance where only the model registry sensor's first tick adds the models,
    is completed by the real daemon."""
    env = _env(tmp_path, factory_lake)
    port = dagster_process.free_port()
    process = dagster_process.start(
        [str(BIN / "dagster"), "dev", "-p", str(port), "-m", "hawkeye_dagster.definitions"],
        env=env, cwd=REPO, log=tmp_path / "dagster_dev.log")
    try:
        dagster_process.wait_until_serving(port, process)
        with _instance(env) as instance:
            deadline = time.monotonic() + 180
            while len(instance.get_dynamic_partitions("model")) < 2:
                assert time.monotonic() < deadline, "the model registry sensor never ticked"
                time.sleep(2)
            keys = [str(dg.MultiPartitionKey({"date": d, "model": m}))
                    for d in FACTORY_DAYS for m in instance.get_dynamic_partitions("model")]
            answer = requests.post(f"http://127.0.0.1:{port}/graphql", timeout=60, json={
                "query": LAUNCH, "variables": {"params": {
                    "assetSelection": [{"path": ["feature_stats"]}, {"path": ["feature_drift"]}],
                    "partitionNames": keys}}}).json()
            launched = answer["data"]["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            deadline = time.monotonic() + 420
            while (backfill := instance.get_backfill(launched["backfillId"])).status.value in (
                    "REQUESTED", "CANCELING", "FAILING"):
                assert time.monotonic() < deadline, "the backfill did not finish"
                time.sleep(3)
            assert backfill.status.value == "COMPLETED_SUCCESS", backfill.status
            assert set(keys) <= instance.get_materialized_partitions(dg.AssetKey("feature_drift"))
    finally:
        dagster_process.stop(process)
