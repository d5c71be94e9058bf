"""Pause and resume for real: the mitigation jobs against a live Dagster webserver (GraphQL).

A ``dagster-webserver`` subprocess serves the ``demo_pipelines`` code location
over a temporary ``DAGSTER_HOME``, built from a small lake whose ``dagster``
pipelines are driven by ``s1_sensor``, ``t1_schedule`` and ``f3_schedule``.
An incident traced to ``s1`` pauses the first two (and the Airflow DAG
``x1_dag`` on a local stub), never ``f3_schedule``, and the resume puts every
one back as it was.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from airflow_stub import AirflowStub
from lineage_world import lineage_tables, open_traced_incident, write_lake

from hawkeye_dagster.assets.mitigation import (
    pause_upstream_pipelines_job,
    resume_pipelines_job,
)
from hawkeye_dagster.mitigation.controls import DagsterControl
from hawkeye_dagster.resources import HawkeyeStorage, MitigationSettings, TelemetrySource

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TARGETS = ("s1_sensor", "t1_schedule", "f3_schedule")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    pipelines = lineage_tables()["pipelines"]
    pipelines.loc[pipelines["pipeline_id"] == "p_f3", ["orchestrator", "target"]] = [
        "dagster", "f3_schedule"]
    write_lake(root, {"pipelines": pipelines})
    return root


@pytest.fixture(scope="module")
def webserver(lake, tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    workspace = home / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_file:\n"
        f"      relative_path: {REPO / 'demo_pipelines' / 'definitions.py'}\n"
        f"      working_directory: {REPO}\n      location_name: demo_pipelines\n")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "HAWKEYE_LAKE": str(lake)}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w", str(workspace),
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited: {process.stderr.read().decode()}")
            try:
                DagsterControl(url, timeout=5).state("s1_sensor")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _states(url: str) -> dict[str, str]:
    control = DagsterControl(url)
    return {t: control.state(t) for t in TARGETS}


def test_pause_and_resume_through_dagster_graphql(lake, webserver, tmp_path):
    assert _states(webserver) == dict.fromkeys(TARGETS, "running:default")
    airflow = AirflowStub({"x1_dag": False})
    storage = HawkeyeStorage(root=str(tmp_path / "out"))
    resources = {
        "telemetry": TelemetrySource(lake=str(lake)), "storage": storage,
        "mitigation": MitigationSettings(dagster_url=webserver, airflow_url=airflow.url,
                                         min_confidence=0.8, max_pipelines=3)}
    def pause(**config):
        return pause_upstream_pipelines_job.execute_in_process(
            run_config={"ops": {"pause_upstream_pipelines": {"config": {"incident": key,
                                                                        **config}}}},
            resources=resources, instance=instance)

    try:
        with dg.instance_for_test() as instance:
            key = open_traced_incident(storage, resources, instance)

            dry = pause().output_for_node("pause_upstream_pipelines")
            assert {r["outcome"] for r in dry} == {"dry_run"}
            assert _states(webserver) == dict.fromkeys(TARGETS, "running:default")

            paused = pause(dry_run=False, actor="on-call").output_for_node(
                "pause_upstream_pipelines")
            assert {r["pipeline_id"]: r["outcome"] for r in paused} == {
                "p_s1": "paused", "p_t1": "paused", "p_x1": "paused"}
            assert _states(webserver) == {"s1_sensor": "paused", "t1_schedule": "paused",
                                          "f3_schedule": "running:default"}
            assert airflow.paused["x1_dag"] is True

            twice = pause(dry_run=False).output_for_node("pause_upstream_pipelines")
            assert {r["outcome"] for r in twice} == {"held"} and len(airflow.patches) == 1

            resumed = resume_pipelines_job.execute_in_process(
                run_config={"ops": {"resume_paused_pipelines": {"config": {"incident": key}}}},
                resources=resources, instance=instance).output_for_node("resume_paused_pipelines")
            assert {r["outcome"] for r in resumed} == {"resumed"}
            assert _states(webserver) == dict.fromkeys(TARGETS, "running:default")
            assert airflow.paused["x1_dag"] is False
    finally:
        airflow.close()

    trail = resources["mitigation"].audit(storage).history(key)
    assert list(trail["action"]) == ["pause"] * 6 + ["resume"] * 3
    assert set(trail.loc[trail["outcome"] == "paused", "actor"]) == {"on-call"}
