"""The instance configurations keep crash recovery on, and the launcher tells dead workers apart.

The demo's ``dagster.yaml`` and ``deploy/dagster.yaml`` are loaded as Dagster loads them;
the launcher's health check is asked about runs whose recorded worker is a real process, alive
and then killed (the end-to-end crash test is ``test_crash_recovery.py``).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.events import EngineEventData
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from hawkeye_dagster.definitions import defs
from hawkeye_dagster.demo import DAGSTER_YAML
from hawkeye_dagster.run_launcher import (
    CRASH_RETRY_TAGS,
    WORKER_STARTED,
    MonitoredRunLauncher,
    process_started_before,
)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"
CRASH_SAFE_JOBS = ("snapshot_diagnostics", "incident_report_job", "feature_monitoring")


@pytest.mark.parametrize("config", [yaml.safe_load(DAGSTER_YAML),
                                    yaml.safe_load(DEPLOY.read_text())], ids=["demo", "deploy"])
def test_run_monitoring_and_bounded_retries_are_on(config):
    monitoring, retries = config["run_monitoring"], config["run_retries"]
    assert config["run_launcher"] == {"module": "hawkeye_dagster.run_launcher",
                                      "class": "MonitoredRunLauncher"}
    assert monitoring["enabled"] and monitoring["max_resume_run_attempts"] == 0
    assert monitoring["start_timeout_seconds"] > 0 and monitoring["cancel_timeout_seconds"] > 0
    assert retries["enabled"] and 0 < retries["max_retries"] <= 3
    assert retries["retry_on_asset_or_op_failure"] is False


def test_the_demo_instance_loads_with_the_monitored_launcher(tmp_path):
    (tmp_path / "dagster.yaml").write_text(DAGSTER_YAML)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_launcher, MonitoredRunLauncher)
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert instance.run_retries_max_retries == 2


@pytest.mark.parametrize("job", CRASH_SAFE_JOBS)
def test_the_crash_safe_jobs_carry_bounded_retries(job):
    assert defs.resolve_job_def(job).tags.items() >= CRASH_RETRY_TAGS.items()


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster.yaml").write_text(DAGSTER_YAML)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance


def _run_with_worker(instance: dg.DagsterInstance, pid: int, info: dict | None):
    run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), tags=(
        {GRPC_INFO_TAG: json.dumps(info)} if info else {}))
    instance.report_engine_event(f"{WORKER_STARTED} (pid: {pid}).", run,
                                 EngineEventData.in_process(pid))
    return run


def test_a_worker_is_running_while_its_process_lives_and_failed_once_it_is_killed(instance):
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = _run_with_worker(instance, worker.pid, {"host": "localhost", "port": 1})
        launcher = instance.run_launcher
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    finally:
        worker.kill()
        worker.wait()
    result = launcher.check_run_worker_health(run)
    assert result.status == WorkerStatus.FAILED and str(worker.pid) in result.msg


def test_a_pid_taken_over_by_a_later_process_is_not_the_worker():
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # recorded by a worker that started before this process: not the worker
        assert not process_started_before(later.pid, time.time() - 3600)
        assert process_started_before(later.pid, time.time() + 5)
    finally:
        later.kill()
        later.wait()
    assert not process_started_before(later.pid, time.time() + 5)


def test_a_run_executed_in_process_is_left_to_its_max_runtime(instance):
    run = instance.create_run_for_job(dg.GraphDefinition("g").to_job())
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING


def test_a_remote_worker_whose_code_server_is_gone_is_dead(instance):
    run = _run_with_worker(instance, 1, {"host": "hawkeye-code.invalid", "port": 4266})
    result = instance.run_launcher.check_run_worker_health(run)
    assert result.status == WorkerStatus.FAILED and "unreachable" in result.msg
