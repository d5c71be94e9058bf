"""Snapshot diagnostics throughput through the deployment's queued run coordinator.

``snapshot_diagnostics_throughput_queued``: the diagnostics of the 6 newest good snapshots
(none a root cause in the truth) of the simulated ``demo`` lake, submitted at once over
GraphQL to ``dagster dev`` (webserver + daemon) on the deployment's instance
(``deploy/dagster.yaml``: PostgreSQL, queued run coordinator) with ``max_concurrent_runs``
1 (the reference) and 2. Each run is a run worker process of its own, as in the deployment.
``params`` has runs per hour and the most runs seen in progress at once (from the runs'
start and end times) per concurrency; ``runs`` has every run's queued/start/end times.
Full mode only; skipped when PostgreSQL is unreachable.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
import sqlalchemy as sa
import yaml

from bench.run import record
from hawkeye_dagster.lake.open import open_lake

#: the tests' PostgreSQL server; each queued-benchmark instance lives in a throwaway schema
PG_URL = os.environ.get("HAWKEYE_TEST_PG_URL",
                        "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parents[1]
DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
LOCATION, REPOSITORY, JOB = "hawkeye", "__repository__", "snapshot_diagnostics"
#: the deployment dequeues every 5 s, which would add up to 5 s to each run of a few seconds;
#: at 1 s the figure is the runs' cost more than the queue's polling
DEQUEUE_INTERVAL_S = 1
#: seconds for ``dagster dev`` to load the code location (torch, pandas, every asset module)
SERVER_TIMEOUT_S = 240
#: seconds one diagnostics run may take before its batch is given up
RUN_TIMEOUT_S = 300



class PostgresUnreachable(RuntimeError):
    """The PostgreSQL server that holds the queued benchmark's instances cannot be reached."""


@dataclass(frozen=True)
class QueuedRun:
    """One diagnostics run as GraphQL reports it; times in seconds after the batch's
    submission, so the wait in the queue (``start_s - queued_s``) is visible."""

    run_id: str
    snapshot_id: str
    status: str
    queued_s: float
    start_s: float
    end_s: float


def _max_overlap(runs: list[QueuedRun]) -> int:
    """The most runs in progress at one time: what the coordinator actually allowed."""
    edges = sorted([(r.start_s, 1) for r in runs] + [(r.end_s, -1) for r in runs])
    in_progress = most = 0
    for _, step in edges:  # at equal times an end sorts before a start
        in_progress += step
        most = max(most, in_progress)
    return most


def _postgres_engine() -> sa.Engine:
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        url = sa.engine.make_url(PG_URL).render_as_string(hide_password=True)
        raise PostgresUnreachable(f"PostgreSQL at {url} unreachable: {exc.orig}") from exc
    return engine


@contextlib.contextmanager
def _postgres_schema(engine: sa.Engine) -> Iterator[str]:
    """A fresh schema for one instance, dropped afterwards (after its processes are gone)."""
    schema = f"hawkeye_bench_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '60s'"))
            conn.execute(sa.schema.DropSchema(schema, cascade=True))


def _instance_config(max_concurrent_runs: int) -> dict:
    """``deploy/dagster.yaml`` with ``max_concurrent_runs`` runs at once, a short dequeue
    interval, and no run retries (a retried run would be a second run of its snapshot)."""
    config = yaml.safe_load(DEPLOY_YAML.read_text())
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = DEQUEUE_INTERVAL_S
    config["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    config.pop("run_retries", None)
    return config


def _environment(dagster_home: Path, schema: str, lake: Path,
                 hawkeye_home: Path) -> dict[str, str]:
    """The deployment's environment: ``DAGSTER_PG_*`` credentials, the schema through libpq's
    ``PGOPTIONS``, and the lake; the caller's own Hawkeye source and storage are dropped."""
    url = sa.engine.make_url(PG_URL)
    env = {k: v for k, v in os.environ.items() if k not in ("HAWKEYE_SQL_URL", "HAWKEYE_STORAGE")}
    return {**env, "DAGSTER_HOME": str(dagster_home), "PGOPTIONS": f"-csearch_path={schema}",
            "DAGSTER_PG_HOST": url.host or "127.0.0.1", "DAGSTER_PG_PORT": str(url.port or 5432),
            "DAGSTER_PG_USER": url.username or "", "DAGSTER_PG_PASSWORD": url.password or "",
            "DAGSTER_PG_DB": url.database or "", "HAWKEYE_LAKE": str(lake),
            "HAWKEYE_HOME": str(hawkeye_home)}


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"http://127.0.0.1:{port}/graphql",
                             json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


_WORKSPACE = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
_ADD_PARTITION = """mutation($key: String!, $repo: RepositorySelector!) {
  addDynamicPartition(partitionKey: $key, partitionsDefName: "snapshot",
                      repositorySelector: $repo) { __typename ... on Error { message } } }"""
_LAUNCH = """mutation($params: [ExecutionParams!]!) {
  launchMultipleRuns(executionParamsList: $params) {
    __typename ... on Error { message }
    ... on LaunchMultipleRunsResult { launchMultipleRunsResult {
      __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message }
      ... on RunConfigValidationInvalid { errors { message } } } } } }"""
_RUNS = """{ runsOrError { __typename ... on Error { message } ... on Runs { results {
  runId status creationTime startTime endTime tags { key value } } } } }"""
_RUN_ERRORS = """query($runId: ID!) { logsForRun(runId: $runId) {
  ... on EventConnection { events { ... on ErrorEvent { error { message } } } } } }"""


@contextlib.contextmanager
def _dagster_dev(env: dict[str, str], workspace: Path,
                 log: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """``dagster dev`` (webserver + daemon) on a free port, once its code location is loaded;
    its whole process group (code server, run workers) is terminated on the way out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-p", str(port),
             "-h", "127.0.0.1"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_for_location(port, server, log)
        yield port, server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group, if any
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _wait_for_location(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dagster dev exited with code {server.returncode} before its "
                               f"code location loaded; last lines of its log:\n{_tail(log)}")
        try:
            entries = _graphql(port, _WORKSPACE)["workspaceOrError"]["locationEntries"]
        except (requests.RequestException, KeyError):
            entries = []  # the webserver is not up yet
        for entry in entries:
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                raise RuntimeError(f"code location {entry['name']} failed to load: "
                                   f"{loaded['message']}")
            if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED" and loaded:
                return
        time.sleep(1)
    raise RuntimeError(f"dagster dev did not load code location {LOCATION!r} within "
                       f"{SERVER_TIMEOUT_S} s; last lines of its log:\n{_tail(log)}")


def _submit(port: int, snapshots: dict[str, str]) -> tuple[float, set[str]]:
    """Registers the snapshots' partitions, then launches one diagnostics run per snapshot in
    one request; each carries its model's tag as the publication sensor's runs do, so the
    deployment's per-model limits apply to it. ``(submitted at, run ids)``."""
    repo = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
    for snapshot_id in snapshots:
        added = _graphql(port, _ADD_PARTITION, {"key": snapshot_id, "repo": repo})
        if added["addDynamicPartition"]["__typename"] != "AddDynamicPartitionSuccess":
            raise RuntimeError(f"adding partition {snapshot_id!r} failed: {added}")
    params = [{"selector": {**repo, "jobName": JOB},
               "executionMetadata": {"tags": [{"key": "dagster/partition", "value": s},
                                              {"key": "hawkeye/model_id", "value": m}]}}
              for s, m in snapshots.items()]
    submitted = time.time()
    launched = _graphql(port, _LAUNCH, {"params": params})["launchMultipleRuns"]
    results = launched.get("launchMultipleRunsResult")
    if results is None or any(r["__typename"] != "LaunchRunSuccess" for r in results):
        raise RuntimeError(f"launching {len(params)} {JOB} runs failed: {launched}")
    return submitted, {r["run"]["runId"] for r in results}


def _run_error(port: int, run_id: str) -> str:
    events = _graphql(port, _RUN_ERRORS, {"runId": run_id})["logsForRun"].get("events", [])
    return "; ".join(e["error"]["message"].strip() for e in events if e.get("error")) \
        or "no error event"


def _wait_for_runs(port: int, server: subprocess.Popen, log: Path, run_ids: set[str],
                   submitted: float, concurrency: int) -> list[QueuedRun]:
    """Polls until every run has finished; a failed run, a run nobody here launched, or a
    batch past its time is an error."""
    timeout = RUN_TIMEOUT_S * math.ceil(len(run_ids) / concurrency)
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dagster dev exited with code {server.returncode} while runs "
                               f"were pending; last lines of its log:\n{_tail(log)}")
        try:
            runs = _graphql(port, _RUNS)["runsOrError"]["results"]
        except requests.RequestException:
            time.sleep(1)  # the webserver is busy: the machine is running diagnostics
            continue
        foreign = {r["runId"] for r in runs} - run_ids
        if foreign:
            raise RuntimeError(f"runs {sorted(foreign)} were launched by something other than "
                               "the benchmark; they would take queue slots")
        statuses = {r["runId"]: r["status"] for r in runs}
        for r in runs:
            if r["status"] in ("FAILURE", "CANCELED"):
                raise RuntimeError(f"{JOB} run {r['runId']} ({_partition(r)}) ended "
                                   f"{r['status']}: {_run_error(port, r['runId'])}")
        if len(runs) == len(run_ids) and all(r["status"] == "SUCCESS" and r["endTime"]
                                             for r in runs):
            return sorted((QueuedRun(r["runId"], _partition(r), r["status"],
                                     r["creationTime"] - submitted, r["startTime"] - submitted,
                                     r["endTime"] - submitted) for r in runs),
                          key=lambda run: run.start_s)
        time.sleep(1)
    raise RuntimeError(f"{JOB} runs not finished {timeout} s after submission at "
                       f"max_concurrent_runs={concurrency} (statuses {statuses}); last lines of "
                       f"the dagster dev log:\n{_tail(log)}")


def _partition(run: dict) -> str:
    return next(t["value"] for t in run["tags"] if t["key"] == "dagster/partition")


def _queued_batch(workdir: Path, lake: Path, snapshots: dict[str, str], concurrency: int,
                  engine: sa.Engine) -> tuple[float, list[QueuedRun]]:
    """One instance (fresh schema, ``max_concurrent_runs`` = ``concurrency``) under
    ``dagster dev``: every snapshot's diagnostics submitted at once; ``(seconds from the
    submission to the last run's end, the runs)``."""
    dagster_home = workdir / "dagster_home"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(_instance_config(concurrency)))
    workspace = workdir / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "bench._queued", "location_name": LOCATION,
        "working_directory": str(REPO)}}]}))
    log = workdir / "dagster_dev.log"
    with _postgres_schema(engine) as schema:
        env = _environment(dagster_home, schema, lake, workdir / "hawkeye_home")
        # the tables exist before the webserver and the daemon start, so they never race to
        # create them (a deployment runs this after each upgrade)
        migrate = subprocess.run([sys.executable, "-m", "dagster", "instance", "migrate"],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        if migrate.returncode:
            raise RuntimeError(f"dagster instance migrate failed:\n{migrate.stderr[-2000:]}")
        with _dagster_dev(env, workspace, log) as (port, server):
            submitted, run_ids = _submit(port, snapshots)
            runs = _wait_for_runs(port, server, log, run_ids, submitted, concurrency)
    return max(r.end_s for r in runs), runs


def bench_queued_throughput(n_runs: int, concurrencies: Sequence[int] = (1, 2)) -> dict:
    """Snapshot diagnostics through the deployment's queued run coordinator: for each
    concurrency, ``n_runs`` runs of the newest good snapshots of the simulated ``demo`` lake are
    submitted at once over GraphQL to ``dagster dev`` on a PostgreSQL instance; the reference
    is the lowest concurrency, the project the highest. Raises :class:`PostgresUnreachable`
    when there is no server to store the instances in."""
    from hawkeye_dagster.simulate import simulate

    engine = _postgres_engine()
    lowest, highest = min(concurrencies), max(concurrencies)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            lake = Path(tmp) / "lake"
            truth = simulate(lake, scenario="demo", seed=0, scale="small")
            # a bad snapshot's run ends FAILURE by design (its blocking checks fail), which
            # here would read as a broken deployment: time the diagnoses of good ones
            bad = {(i["root_cause"] or {}).get("id") for i in truth["incidents"]
                   if (i["root_cause"] or {}).get("kind") == "snapshot"}
            published = open_lake(str(lake)).read("snapshots", columns=[
                "snapshot_id", "model_id", "published_at"]).sort_values("published_at")
            newest = published[~published["snapshot_id"].isin(bad)].tail(n_runs)
            snapshots = dict(zip(newest["snapshot_id"], newest["model_id"]))
            batches = {c: _queued_batch(Path(tmp) / f"c{c}", lake, snapshots, c, engine)
                       for c in concurrencies}
    finally:
        engine.dispose()
    params: dict = {"runs_per_concurrency": n_runs, "lake": "demo/small"}
    for c, (wall_s, runs) in batches.items():
        params |= {f"runs_per_hour_c{c}": 3600 * len(runs) / wall_s,
                   f"succeeded_c{c}": sum(r.status == "SUCCESS" for r in runs),
                   f"max_concurrent_runs_c{c}": _max_overlap(runs),
                   f"mean_run_s_c{c}": sum(r.end_s - r.start_s for r in runs) / len(runs)}
    params |= {"dequeue_interval_s": DEQUEUE_INTERVAL_S, "cpu_count": os.cpu_count(),
               "storage": "postgres"}
    result = record("snapshot_diagnostics_throughput_queued", batches[highest][0],
                     f"the same runs at max_concurrent_runs={lowest}", batches[lowest][0],
                     params)
    result["runs"] = {f"c{c}": [asdict(r) for r in runs] for c, (_, runs) in batches.items()}
    return result


def run(quick: bool) -> list[dict]:
    """Full mode only (two ``dagster dev`` instances, 6 runs each: minutes); skipped when
    PostgreSQL is unreachable."""
    if quick:
        return []
    try:
        return [bench_queued_throughput(6)]
    except PostgresUnreachable as exc:
        print(f"skipping snapshot_diagnostics_throughput_queued: {exc}", file=sys.stderr)
        return []


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
