"""Pausing through Dagster's GraphQL endpoint while it is down, slow or flaky.

The endpoint is a local stand-in that answers the queries :class:`DagsterControl` sends with
the shapes Dagster's GraphQL returns (the real webserver is exercised in
``test_mitigation_dagster.py``), and injects faults. A failed pause is retried the way a
Dagster op retry reruns it: the same call again. What must hold: each pipeline is paused once,
the audit trail says what happened, and resume puts back the exact state from before. A pause
whose process is SIGKILLed mid-way is retried the way Dagster's run retry redoes it: the same
call in a new process.
"""

import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from lineage_world import lineage_tables

from hawkeye_dagster.analysis.lineage_graph import build_lineage_graph
from hawkeye_dagster.mitigation.audit import AuditStore
from hawkeye_dagster.mitigation.controls import DagsterControl
from hawkeye_dagster.mitigation.pausing import pause_pipelines, resume_pipelines
from hawkeye_dagster.mitigation.planning import PausePolicy, plan_pause

LIVE = PausePolicy(dry_run=False, min_confidence=0.8, max_pipelines=3)
#: lineage_world: s1 is produced by p_s1 (sensor s1_sensor), t1 by p_t1 (schedule t1_schedule)
TARGETS = {"s1_sensor": ("sensor", "RUNNING", True), "t1_schedule": ("schedule", "RUNNING", False)}


class DagsterGraphQLStub:
    """Schedules and sensors with a status, served through the GraphQL operations
    ``DagsterControl`` uses. Faults: ``slow_s`` delays every answer, ``fail_next`` answers
    that many requests with HTTP 502, ``slow_mutations`` delays only mutations (the change is
    made, the answer comes late)."""

    def __init__(self, targets: dict[str, tuple[str, str, bool]]):
        # name -> [kind, status, status declared in code (canReset False)]
        self.targets = {n: list(v) for n, v in targets.items()}
        self.mutations: list[tuple[str, str]] = []
        self.slow_s = 0.0
        self.slow_mutations = 0.0
        self.fail_next = 0
        self.tokens: list[str | None] = []  # each request's Dagster+ API token header
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.tokens.append(self.headers.get("Dagster-Cloud-Api-Token"))
                time.sleep(stub.slow_s)
                with stub.lock:
                    if stub.fail_next:
                        stub.fail_next -= 1
                        return self._reply(502, {"error": "bad gateway"})
                    data = stub.answer(body["query"], body.get("variables") or {})
                if body["query"].lstrip().startswith("mutation"):
                    time.sleep(stub.slow_mutations)
                self._reply(200, {"data": data})

            def _reply(self, code, body):
                payload = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, query: str, variables: dict) -> dict:
        if "repositoriesOrError" in query:
            def item(name, kind, status, declared):
                return {"name": name, "canReset": not declared,
                        f"{kind}State": {"id": f"id-{name}", "status": status}}
            nodes = {f"{k}s": [item(n, *v) for n, v in self.targets.items() if v[0] == k]
                     for k in ("schedule", "sensor")}
            return {"repositoriesOrError": {"__typename": "RepositoryConnection", "nodes": [
                {"name": "__repository__", "location": {"name": "pipelines"}, **nodes}]}}
        if "id" in variables:
            name = variables["id"].removeprefix("id-")
            action = "stop"
        else:
            selector = variables["selector"]
            name = selector.get("sensorName") or selector.get("scheduleName")
            action = "reset" if "reset" in query else "start"
        self.mutations.append((action, name))
        self.targets[name][1] = "STOPPED" if action == "stop" else "RUNNING"
        if action != "stop":
            self.targets[name][2] = action == "reset"
        return {"result": {"__typename": "Sensor" if self.targets[name][0] == "sensor"
                           else "ScheduleStateResult"}}

    def state(self) -> dict:
        return {n: tuple(v[1:]) for n, v in self.targets.items()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = DagsterGraphQLStub(TARGETS)
    yield server
    server.close()


@pytest.fixture
def plan():
    t = lineage_tables()
    graph = build_lineage_graph(t["lineage_nodes"], t["lineage_edges"], t["features"],
                                t["pipelines"])
    return plan_pause(graph, "s1", ["f1"], incident="i1", confidence=0.95)


@pytest.fixture
def audit(tmp_path):
    return AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite'}")


def _dagster_rows(frame):
    return frame[frame["orchestrator"] == "dagster"].set_index("pipeline_id")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: the targets' state before any fault or pause
BEFORE = {name: (status, declared) for name, (_, status, declared) in TARGETS.items()}


def _pause_and_resume_exactly(stub, plan, audit, control):
    """The retried pause holds every Dagster pipeline once; resume restores the original."""
    result = _dagster_rows(pause_pipelines(plan, LIVE, {"dagster": control}, audit, actor="op"))
    assert set(result["outcome"]) <= {"paused", "held"}
    assert sorted(audit.holding("i1").query("orchestrator == 'dagster'")["target"]) == \
        sorted(TARGETS)
    assert sorted(m for m in stub.mutations if m[0] == "stop") == sorted(
        ("stop", t) for t in TARGETS)
    assert {n: s[0] for n, s in stub.state().items()} == {n: "STOPPED" for n in TARGETS}
    resumed = _dagster_rows(resume_pipelines("i1", {"dagster": control}, audit, actor="op"))
    assert set(resumed["outcome"]) == {"resumed"}
    assert stub.state() == BEFORE
    assert audit.holding("i1").query("orchestrator == 'dagster'").empty


def test_endpoint_down_then_retried(stub, plan, audit):
    down = DagsterControl(f"http://127.0.0.1:{_closed_port()}", timeout=2)
    first = _dagster_rows(pause_pipelines(plan, LIVE, {"dagster": down}, audit, actor="op"))
    assert set(first["outcome"]) == {"failed"}
    assert first["reason"].str.contains("s1_sensor|t1_schedule").all()
    assert audit.holding("i1").query("orchestrator == 'dagster'").empty
    assert stub.mutations == []
    _pause_and_resume_exactly(stub, plan, audit, DagsterControl(stub.url, timeout=2))


def test_flaky_endpoint_then_retried(stub, plan, audit):
    stub.fail_next = 1
    first = _dagster_rows(pause_pipelines(plan, LIVE, {"dagster": DagsterControl(stub.url)},
                                          audit, actor="op"))
    assert "failed" in set(first["outcome"])
    _pause_and_resume_exactly(stub, plan, audit, DagsterControl(stub.url, timeout=2))


def test_slow_endpoint_times_out_then_retried(stub, plan, audit):
    stub.slow_s = 1.0
    first = _dagster_rows(pause_pipelines(plan, LIVE, {"dagster": DagsterControl(
        stub.url, timeout=0.3)}, audit, actor="op"))
    assert set(first["outcome"]) == {"failed"}
    assert first["reason"].str.contains("timed out", case=False).all()
    stub.slow_s = 0.0
    time.sleep(1.2)  # let the late answers drain
    _pause_and_resume_exactly(stub, plan, audit, DagsterControl(stub.url, timeout=2))


def test_pause_applied_but_answer_lost_is_still_resumed(stub, plan, audit):
    stub.slow_mutations = 1.0
    pause_pipelines(plan, LIVE, {"dagster": DagsterControl(stub.url, timeout=0.3)}, audit,
                    actor="op")
    stub.slow_mutations = 0.0
    time.sleep(1.2)
    _pause_and_resume_exactly(stub, plan, audit, DagsterControl(stub.url, timeout=2))


def test_dagster_plus_token_goes_in_its_header(stub):
    assert DagsterControl(stub.url, token="user:secret").state("s1_sensor") == "running:default"
    assert DagsterControl(stub.url).state("t1_schedule") == "running"
    assert stub.tokens == ["user:secret", None]


class KilledControl(DagsterControl):
    """The real control, whose process is SIGKILLed on its first pause: ``before`` asking the
    orchestrator, or right after the orchestrator applied it (its answer never recorded)."""

    def __init__(self, url: str, when: str):
        super().__init__(url, timeout=2)
        self.when = when

    def pause(self, target: str) -> None:
        if self.when == "after":
            super().pause(target)
        os.kill(os.getpid(), signal.SIGKILL)


def _pause_in_a_process_killed(stub, plan, audit_url: str, when: str) -> int:
    def pause() -> None:
        pause_pipelines(plan, LIVE, {"dagster": KilledControl(stub.url, when)},
                        AuditStore(audit_url), actor="op")

    child = multiprocessing.get_context("fork").Process(target=pause)
    child.start()
    child.join(30)
    return child.exitcode


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_run_killed_mid_pause_leaves_a_consistent_trail_and_its_retry_pauses_once(
        stub, plan, tmp_path, when):
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    before = {t: DagsterControl(stub.url).state(t) for t in TARGETS}
    assert _pause_in_a_process_killed(stub, plan, url, when) == -signal.SIGKILL
    audit = AuditStore(url)
    trail = audit.history("i1")
    # the trail says a pause was under way, with the state before it, not that it holds
    assert list(trail["outcome"]) == ["pausing"]
    [target] = trail["target"]
    assert trail["state_before"].iloc[0] == before[target]
    assert audit.holding("i1").empty
    assert stub.mutations == ([("stop", target)] if when == "after" else [])
    _pause_and_resume_exactly(stub, plan, audit, DagsterControl(stub.url, timeout=2))
    paused = audit.history("i1").query("action == 'pause' and outcome == 'paused'")
    assert sorted(paused["target"]) == sorted(TARGETS)          # each pipeline paused once
