"""Pausing upstream pipelines: the plan, the policy, the audit trail, and Airflow's REST API.

Airflow is a local HTTP stub that records the calls (a test double of the
third-party service; real Airflow 3 and 2 servers are in ``test_airflow_real.py``);
Dagster's own GraphQL path is exercised against a real webserver in
``test_mitigation_dagster.py``. Here Dagster targets use an in-memory control so
the bookkeeping can be checked on its own.
"""

from __future__ import annotations

import pytest
from airflow_stub import AirflowStub
from lineage_world import lineage_tables

from hawkeye_dagster.analysis.lineage_graph import build_lineage_graph
from hawkeye_dagster.mitigation.audit import AuditStore
from hawkeye_dagster.mitigation.controls import AirflowControl, ControlError
from hawkeye_dagster.mitigation.pausing import pause_pipelines, resume_pipelines
from hawkeye_dagster.mitigation.planning import PausePolicy, plan_pause, refusal
from hawkeye_dagster.resources import MitigationSettings

LIVE = PausePolicy(dry_run=False, min_confidence=0.8, max_pipelines=3)


class MemoryControl:
    """An orchestrator whose targets are states in a dict."""

    def __init__(self, states):
        self.states, self.calls = dict(states), []

    def state(self, target):
        return self.states[target]

    def pause(self, target):
        self.calls.append(("pause", target))
        self.states[target] = "paused"

    def restore(self, target, state):
        self.calls.append(("restore", target))
        self.states[target] = state


@pytest.fixture
def graph():
    t = lineage_tables()
    return build_lineage_graph(t["lineage_nodes"], t["lineage_edges"], t["features"],
                               t["pipelines"])


@pytest.fixture
def airflow():
    stub = AirflowStub({"x1_dag": False, "s3_dag": False})
    yield stub
    stub.close()


@pytest.fixture
def audit(tmp_path):
    return AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite'}")


def test_plan_covers_the_path_from_cause_to_features_and_nothing_else(graph):
    plan = plan_pause(graph, "s1", ["f1", "f2"], incident="i1", confidence=0.9)
    rows = plan.pipelines.set_index("pipeline_id")
    assert list(rows.index) == ["p_s1", "p_t1", "p_x1"]             # cause first, then downstream
    assert rows.loc["p_x1", "nodes"] == ("x1", "nf1", "nf2")
    assert tuple(rows.loc["p_s1", ["orchestrator", "target"]]) == ("dagster", "s1_sensor")
    only_x1 = plan_pause(graph, "x1", ["f1"], incident="i2", confidence=0.9)
    assert list(only_x1.pipelines["pipeline_id"]) == ["p_x1"]
    assert only_x1.pipelines.iloc[0]["nodes"] == ("x1", "nf1")      # nf2 feeds no bad feature


def test_policy_guard_rails(graph):
    plan = plan_pause(graph, "s1", ["f1"], incident="i1", confidence=0.9)
    assert refusal(plan, PausePolicy(), automatic=False) == "dry run: nothing paused"
    assert refusal(plan, LIVE, automatic=False) is None
    assert "not enabled" in refusal(plan, LIVE, automatic=True)
    assert refusal(plan, PausePolicy(dry_run=False, auto=True), automatic=True) is None
    weak = plan_pause(graph, "s1", ["f1"], incident="i1", confidence=0.5)
    assert "below" in refusal(weak, LIVE, automatic=False)
    assert "exceed" in refusal(plan, PausePolicy(dry_run=False, max_pipelines=2), automatic=False)


def test_dry_run_records_and_touches_nothing(graph, airflow, audit):
    dagster = MemoryControl({"s1_sensor": "running", "t1_schedule": "running"})
    controls = {"dagster": dagster, "airflow": AirflowControl(airflow.url)}
    plan = plan_pause(graph, "s1", ["f1", "f2"], incident="i1", confidence=0.99)
    result = pause_pipelines(plan, PausePolicy(), controls, audit, actor="test")
    assert set(result["outcome"]) == {"dry_run"}
    assert dagster.calls == [] and airflow.patches == []
    assert len(audit.history("i1")) == 3 and audit.holding("i1").empty


def test_pause_is_idempotent_and_resume_restores_exactly(graph, airflow, audit):
    dagster = MemoryControl({"s1_sensor": "running:default", "t1_schedule": "running",
                             "other_schedule": "running"})
    controls = {"dagster": dagster, "airflow": AirflowControl(airflow.url)}
    plan = plan_pause(graph, "s1", ["f1", "f2"], incident="i1", confidence=0.95)

    first = pause_pipelines(plan, LIVE, controls, audit, actor="alice", reason="bad clicks")
    assert list(first["outcome"]) == ["paused"] * 3
    assert dagster.states == {"s1_sensor": "paused", "t1_schedule": "paused",
                              "other_schedule": "running"}
    assert airflow.patches == [("x1_dag", ["is_paused"], {"is_paused": True})]
    trail = audit.history("i1")
    assert list(trail["state_before"]) == ["running:default", "running", "running"]
    assert set(trail["actor"]) == {"alice"} and trail["reason"].str.contains("bad clicks").all()

    again = pause_pipelines(plan, LIVE, controls, audit, actor="alice")
    assert set(again["outcome"]) == {"held"}
    assert len(airflow.patches) == 1 and len(dagster.calls) == 2 and len(audit.history("i1")) == 3

    resumed = resume_pipelines("i1", controls, AuditStore(str(audit.engine.url)), actor="bob")
    assert set(resumed["outcome"]) == {"resumed"}
    assert dagster.states == {"s1_sensor": "running:default", "t1_schedule": "running",
                              "other_schedule": "running"}
    assert airflow.patches[-1] == ("x1_dag", ["is_paused"], {"is_paused": False})
    assert resume_pipelines("i1", controls, audit, actor="bob").empty
    assert len(airflow.patches) == 2


def test_a_pipeline_paused_before_is_left_paused(graph, airflow, audit):
    airflow.paused["x1_dag"] = True
    dagster = MemoryControl({"s1_sensor": "running", "t1_schedule": "running"})
    controls = {"dagster": dagster, "airflow": AirflowControl(airflow.url)}
    plan = plan_pause(graph, "t1", ["f1"], incident="i7", confidence=0.9)
    result = pause_pipelines(plan, LIVE, controls, audit, actor="t").set_index("pipeline_id")
    assert result.loc["p_x1", "outcome"] == "already_paused"
    assert result.loc["p_t1", "outcome"] == "paused"
    resume_pipelines("i7", controls, audit, actor="t")
    assert airflow.paused["x1_dag"] is True and airflow.patches == []
    assert dagster.states["t1_schedule"] == "running"


def test_pipelines_without_a_control_are_recorded_for_a_person(graph, audit):
    plan = plan_pause(graph, "s3", ["f3"], incident="i3", confidence=0.9)
    result = pause_pipelines(plan, LIVE, {}, audit, actor="t")
    assert list(result["outcome"]) == ["recorded", "recorded"]
    assert result["reason"].str.contains("by hand").all()
    assert set(audit.holding("i3")["pipeline_id"]) == {"p_s3", "p_f3"}
    resumed = resume_pipelines("i3", {}, audit, actor="t")
    assert list(resumed["outcome"]) == ["recorded", "recorded"]
    assert audit.holding("i3").empty


def test_refused_plans_touch_nothing(graph, airflow, audit):
    controls = {"airflow": AirflowControl(airflow.url)}
    weak = plan_pause(graph, "x1", ["f1"], incident="i4", confidence=0.3)
    result = pause_pipelines(weak, LIVE, controls, audit, actor="sensor", automatic=False)
    assert list(result["outcome"]) == ["refused"] and airflow.patches == []


def test_orchestrator_errors_are_recorded_not_raised(graph, audit):
    broken = AirflowStub({"x1_dag": False}, fail=True)
    try:
        plan = plan_pause(graph, "x1", ["f1"], incident="i5", confidence=0.9)
        result = pause_pipelines(plan, LIVE, {"airflow": AirflowControl(broken.url)}, audit,
                                 actor="t")
    finally:
        broken.close()
    assert list(result["outcome"]) == ["failed"]
    assert "x1_dag" in result.iloc[0]["reason"]
    assert audit.holding("i5").empty


class LostAnswerControl(MemoryControl):
    """Applies the pause, then loses the answer (``lose`` times)."""

    def __init__(self, states, lose):
        super().__init__(states)
        self.lose = lose

    def pause(self, target):
        super().pause(target)
        if self.lose:
            self.lose -= 1
            raise ControlError(f"answer for {target} timed out")


def _t1(result):
    """The outcome and state before of ``p_t1`` (the plan's Dagster pipeline)."""
    return result.set_index("pipeline_id").loc["p_t1", ["outcome", "state_before"]]


def test_a_failed_pause_counts_only_until_the_pipeline_settles(graph, audit):
    plan = plan_pause(graph, "t1", ["f1"], incident="i8", confidence=0.9)
    dagster = LostAnswerControl({"t1_schedule": "running:default"}, lose=1)
    first = _t1(pause_pipelines(plan, LIVE, {"dagster": dagster}, audit, actor="t"))
    assert list(first) == ["failed", "running:default"]
    retry = _t1(pause_pipelines(plan, LIVE, {"dagster": dagster}, audit, actor="t"))
    assert list(retry) == ["paused", "running:default"]
    assert dagster.calls == [("pause", "t1_schedule")]          # paused once
    resume_pipelines("i8", {"dagster": dagster}, audit, actor="t")
    assert dagster.states["t1_schedule"] == "running:default"
    dagster.states["t1_schedule"] = "paused"                     # someone else pauses it now
    later = _t1(pause_pipelines(plan, LIVE, {"dagster": dagster}, audit, actor="t"))
    assert later["outcome"] == "already_paused"        # the old failure is settled
    resume_pipelines("i8", {"dagster": dagster}, audit, actor="t")
    assert dagster.states["t1_schedule"] == "paused"


def test_airflow_3_tokens_are_asked_for_once_and_again_when_expired():
    stub = AirflowStub({"x1_dag": False}, users={"admin": "pw"})
    try:
        control = AirflowControl(stub.url, username="admin", password="pw")
        assert control.state("x1_dag") == "running" and control.api == "v2"
        control.pause("x1_dag")
        assert control.state("x1_dag") == "paused" and len(stub.tokens) == 1
        stub.expire_tokens()
        control.restore("x1_dag", "running")
        assert stub.paused["x1_dag"] is False and len(stub.tokens) == 2
        issued = next(iter(stub.tokens - stub.expired))
        assert AirflowControl(stub.url, token=issued, api="v2").state("x1_dag") == "running"
        stub.expire_tokens()
        with pytest.raises(ControlError, match="Token Expired") as expired:
            AirflowControl(stub.url, token=issued).state("x1_dag")    # nothing to renew it with
        assert expired.value.status == 401
        with pytest.raises(ControlError, match="Invalid credentials"):
            AirflowControl(stub.url, username="admin", password="wrong").state("x1_dag")
    finally:
        stub.close()


def test_airflow_2_basic_auth_on_api_v1():
    stub = AirflowStub({"x1_dag": False}, airflow=2, users={"admin": "pw"})
    try:
        control = AirflowControl(stub.url, username="admin", password="pw")
        control.pause("x1_dag")
        assert control.api == "v1" and stub.paused["x1_dag"] is True
        with pytest.raises(ControlError) as refused:
            AirflowControl(stub.url, username="admin", password="wrong", api="v1").state("x1_dag")
        assert refused.value.status == 403           # what Airflow 2 answers bad credentials
    finally:
        stub.close()


def test_airflow_errors_carry_the_status_and_the_body_and_name_the_dag(airflow):
    with pytest.raises(ControlError, match="x1_dag") as removed:
        AirflowControl(airflow.url, api="v1").state("x1_dag")
    assert removed.value.status == 404
    assert "/api/v1 has been removed in Airflow 3" in removed.value.body
    assert removed.value.body in str(removed.value)
    with pytest.raises(ControlError, match="'gone_dag'.*DAG not found"):
        AirflowControl(airflow.url).pause("gone_dag")
    with pytest.raises(ValueError, match="v1"):
        AirflowControl(airflow.url, api="v3")


def test_tokens_and_the_airflow_api_come_from_the_environment(monkeypatch):
    for name, value in {"DAGSTER_URL": "https://org.dagster.cloud/prod", "DAGSTER_TOKEN": "user:t",
                        "AIRFLOW_URL": "http://airflow:8080", "AIRFLOW_TOKEN": "jwt",
                        "AIRFLOW_API": "v2"}.items():
        monkeypatch.setenv(f"HAWKEYE_{name}", value)
    controls = MitigationSettings.from_env().controls()
    assert controls["dagster"].headers == {"Dagster-Cloud-Api-Token": "user:t"}
    assert controls["dagster"].endpoint == "https://org.dagster.cloud/prod/graphql"
    assert (controls["airflow"].token, controls["airflow"].api) == ("jwt", "v2")
