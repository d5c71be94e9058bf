"""Pause and resume against real Airflow servers: Airflow 3's API server and Airflow 2's webserver.

Each Airflow release is installed once into a virtual environment of its own, cached
between runs under ``~/.cache/hawkeye-dagster/airflow-<version>`` (``$XDG_CACHE_HOME``
moves it), never into the project's. Airflow's constraint files are not on PyPI, so the
install is a plain ``pip install apache-airflow==<version>``. The server runs on a free
127.0.0.1 port over a SQLite metadata database, with one DAG per ``airflow`` pipeline of
the lake, parsed into the database before it starts. Whether a DAG is paused is read
through Airflow's own CLI (its metadata database), not through the API under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import requests
from lineage_world import lineage_tables, open_traced_incident, write_lake

from hawkeye_dagster.assets.mitigation import pause_upstream_pipelines_job, resume_pipelines_job
from hawkeye_dagster.mitigation.controls import AirflowControl, ControlError
from hawkeye_dagster.resources import HawkeyeStorage, MitigationSettings, TelemetrySource

pytestmark = pytest.mark.slow
AIRFLOW_3, AIRFLOW_2 = "3.3.2", "2.11.2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hawkeye-dagster"
USER, PASSWORD = "admin", "hawkeye-test"
#: Airflow 3's token lifetime here, short so that a real expiry can be waited for
TOKEN_LIFETIME_S = 5

#: lineage_world's pipelines, all of them on Airflow: p_s1 -> s1_dag, p_t1 -> t1_dag
PIPELINES = lineage_tables()["pipelines"]
_DAGSTER = PIPELINES["orchestrator"] == "dagster"
PIPELINES.loc[_DAGSTER, "target"] = PIPELINES.loc[_DAGSTER, "pipeline_id"].str[2:] + "_dag"
PIPELINES.loc[_DAGSTER, "orchestrator"] = "airflow"
DAGS = sorted(PIPELINES.loc[PIPELINES["orchestrator"] == "airflow", "target"])


@dataclass
class Airflow:
    version: str
    url: str
    env: dict
    bin: Path

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def cli(self, *args: str) -> str:
        """``airflow *args``'s standard output."""
        return subprocess.run([str(self.bin / "airflow"), *args], env=self.env, check=True,
                              capture_output=True, text=True, timeout=300).stdout


def _install(version: str) -> Path:
    """The bin folder of a virtual environment with ``apache-airflow==version``; installed once,
    marked done only when pip succeeded so that a broken install is redone."""
    root = CACHE / f"airflow-{version}"
    done = root / ".hawkeye-installed"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True,
                           capture_output=True, timeout=300)
            subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            f"apache-airflow=={version}"], check=True, capture_output=True,
                           timeout=1800)
        except (OSError, subprocess.SubprocessError) as exc:
            output = getattr(exc, "stderr", None) or b""
            pytest.skip(f"apache-airflow {version} could not be installed into {root}: "
                        f"{exc}; {output.decode(errors='replace')[-500:]}")
        done.write_text(version)
    return root / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(bin_dir: Path, version: str, home: Path) -> Airflow:
    """A migrated metadata database holding the lake's DAGs (running) and an admin user."""
    major = int(version.split(".")[0])
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "hawkeye_pipelines.py").write_text(
        "import datetime\n"
        + ("from airflow.sdk import DAG\n" if major >= 3 else "from airflow import DAG\n")
        + f"for dag_id in {DAGS!r}:\n"
        "    globals()[dag_id] = DAG(dag_id, schedule='@daily', catchup=False,\n"
        "                            start_date=datetime.datetime(2026, 1, 1))\n")
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
    if major >= 3:
        (home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
        env |= {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
                "AIRFLOW__API_AUTH__JWT_SECRET": "hawkeye-test-secret",
                "AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME": str(TOKEN_LIFETIME_S),
                "AIRFLOW__API_AUTH__JWT_LEEWAY": "0"}
    else:
        env |= {"AIRFLOW__API__AUTH_BACKENDS": "airflow.api.auth.backend.basic_auth",
                "AIRFLOW__WEBSERVER__SECRET_KEY": "hawkeye-test-secret"}
    airflow = Airflow(version, f"http://127.0.0.1:{_free_port()}", env, bin_dir)
    airflow.cli("db", "migrate")
    airflow.cli("dags", "reserialize")
    if major < 3:
        airflow.cli("users", "create", "--username", USER, "--password", PASSWORD, "--role",
                    "Admin", "--firstname", "Hawk", "--lastname", "Eye",
                    "--email", "admin@example.com")
    return airflow


@pytest.fixture(scope="session", params=[AIRFLOW_3, AIRFLOW_2])
def airflow(request, tmp_path_factory):
    """A running Airflow server of the version in ``request.param``; stopped with its whole
    process group (Airflow 2's gunicorn workers included)."""
    version = request.param
    bin_dir = _install(version)
    home = tmp_path_factory.mktemp(f"airflow-{version}")
    try:
        airflow = _prepare(bin_dir, version, home)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"Airflow {version} could not be set up: {exc}; "
                    f"{(getattr(exc, 'stderr', '') or '')[-500:]}")
    server = "api-server" if airflow.major >= 3 else "webserver"
    log = home / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(bin_dir / "airflow"), server, "-H", "127.0.0.1", "-p",
             airflow.url.rsplit(":", 1)[1], "-w", "1"],
            env=airflow.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        version_url = f"{airflow.url}/api/{'v2' if airflow.major >= 3 else 'v1'}/version"
        deadline = time.monotonic() + 180
        while not _answers(version_url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"Airflow {version} did not start: {log.read_text()[-1000:]}")
            time.sleep(0.5)
        yield airflow
    finally:
        _stop(process)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL to what is left of it after 30 s (workers can
    outlive the process that started them)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            process.poll()
            os.killpg(process.pid, 0)
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _paused(airflow: Airflow) -> dict[str, bool]:
    """Each DAG's ``is_paused`` as Airflow's CLI reads it (it prints ``"True"``/``"False"``)."""
    listed = json.loads(airflow.cli("dags", "list", "-o", "json").strip().splitlines()[-1])
    return {dag["dag_id"]: str(dag["is_paused"]) == "True" for dag in listed}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    write_lake(root, {"pipelines": PIPELINES})
    return root


def test_pause_and_resume_real_airflow_dags(airflow, lake, tmp_path):
    airflow.cli("dags", "pause", "t1_dag")            # someone else's pause, before the incident
    before = _paused(airflow)
    assert before == dict.fromkeys(DAGS, False) | {"t1_dag": True}
    storage = HawkeyeStorage(root=str(tmp_path / "out"))
    resources = {"telemetry": TelemetrySource(lake=str(lake)), "storage": storage,
                 "mitigation": MitigationSettings(airflow_url=airflow.url, airflow_username=USER,
                                                  airflow_password=PASSWORD)}
    with dg.instance_for_test() as instance:
        key = open_traced_incident(storage, resources, instance)
        paused = pause_upstream_pipelines_job.execute_in_process(
            run_config={"ops": {"pause_upstream_pipelines": {"config": {
                "incident": key, "dry_run": False, "actor": "on-call"}}}},
            resources=resources, instance=instance).output_for_node("pause_upstream_pipelines")
        assert {r["pipeline_id"]: r["outcome"] for r in paused} == {
            "p_s1": "paused", "p_t1": "already_paused", "p_x1": "paused"}
        assert _paused(airflow) == dict.fromkeys(DAGS, True) | {"s3_dag": False}

        resumed = resume_pipelines_job.execute_in_process(
            run_config={"ops": {"resume_paused_pipelines": {"config": {"incident": key}}}},
            resources=resources, instance=instance).output_for_node("resume_paused_pipelines")
        assert {r["pipeline_id"]: r["outcome"] for r in resumed} == {
            "p_s1": "resumed", "p_x1": "resumed"}
    assert _paused(airflow) == before                 # t1_dag stays paused: not ours


@pytest.mark.parametrize("airflow", [AIRFLOW_3], indirect=True)
def test_airflow_3_bearer_tokens_issued_beforehand_or_renewed(airflow):
    token = requests.post(f"{airflow.url}/auth/token", timeout=30,
                          json={"username": USER, "password": PASSWORD}).json()["access_token"]
    assert AirflowControl(airflow.url, token=token).state("s3_dag") == "running"
    with pytest.raises(ControlError, match="s3_dag") as removed:
        AirflowControl(airflow.url, token=token, api="v1").state("s3_dag")
    assert removed.value.status == 404 and "/api/v1 has been removed" in removed.value.body
    time.sleep(TOKEN_LIFETIME_S + 1)
    with pytest.raises(ControlError, match="Token Expired") as expired:
        AirflowControl(airflow.url, token=token).state("s3_dag")
    assert expired.value.status == 401
    renewing = AirflowControl(airflow.url, username=USER, password=PASSWORD, token=token)
    assert renewing.state("s3_dag") == "running" and renewing.token != token


@pytest.mark.parametrize("airflow", [AIRFLOW_2], indirect=True)
def test_airflow_2_basic_auth(airflow):
    control = AirflowControl(airflow.url, username=USER, password=PASSWORD)
    assert control.state("s3_dag") == "running" and control.api == "v1"
    with pytest.raises(ControlError, match="s3_dag") as refused:
        AirflowControl(airflow.url, username=USER, password="wrong").state("s3_dag")
    assert refused.value.status in (401, 403)
