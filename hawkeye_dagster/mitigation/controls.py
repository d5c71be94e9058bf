"""Orchestrator controls: read, pause and restore a pipeline's scheduling state.

A control knows one orchestrator. :meth:`state` returns an opaque string
that :meth:`restore` takes back, so a resume puts the pipeline exactly where
it was (for Dagster that includes "running because the code says so" versus
"turned on by hand"). States starting with ``running`` are the ones a pause
changes.
"""

from __future__ import annotations

from typing import Protocol

import requests

from hawkeye_dagster.errors import HawkeyeError

RUNNING, PAUSED = "running", "paused"


class ControlError(HawkeyeError):
    """The orchestrator refused or failed a request; names the pipeline target."""


class PipelineControl(Protocol):
    def state(self, target: str) -> str:
        """The target's current state (``running...`` or ``paused...``)."""

    def pause(self, target: str) -> None:
        """Stop the target from producing new runs."""

    def restore(self, target: str, state: str) -> None:
        """Put the target back into a state :meth:`state` returned."""


_INSTIGATORS = """
query HawkeyeInstigators {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        schedules { name canReset scheduleState { id status } }
        sensors { name canReset sensorState { id status } }
      }
    }
    ... on PythonError { message }
  }
}
"""
_RESULT = "__typename ... on PythonError { message } ... on UnauthorizedError { message }"
_MUTATIONS = {
    ("schedule", "stop"): "mutation($id: String) { result: stopRunningSchedule(id: $id) { %s } }",
    ("sensor", "stop"): "mutation($id: String) { result: stopSensor(id: $id) { %s } }",
    ("schedule", "start"): "mutation($selector: ScheduleSelector!) "
                           "{ result: startSchedule(scheduleSelector: $selector) { %s } }",
    ("sensor", "start"): "mutation($selector: SensorSelector!) "
                         "{ result: startSensor(sensorSelector: $selector) { %s } }",
    ("schedule", "reset"): "mutation($selector: ScheduleSelector!) "
                           "{ result: resetSchedule(scheduleSelector: $selector) { %s } }",
    ("sensor", "reset"): "mutation($selector: SensorSelector!) "
                         "{ result: resetSensor(sensorSelector: $selector) { %s } }",
}


class DagsterControl:
    """Stops and restarts the schedule or sensor named by ``pipelines.target`` through GraphQL.

    ``url`` is the webserver's address (e.g. ``http://localhost:3000``). The
    target is looked up by name in every loaded code location. States are
    ``running``/``paused`` with ``:default`` when the status is the one
    declared in code (restored by a reset rather than an explicit start).
    """

    def __init__(self, url: str, *, timeout: float = 30.0):
        self.endpoint = url.rstrip("/") + "/graphql"
        self.timeout = timeout

    def state(self, target: str) -> str:
        found = self._find(target)
        status = RUNNING if found["state"]["status"] == "RUNNING" else PAUSED
        return status if found["canReset"] else f"{status}:default"

    def pause(self, target: str) -> None:
        found = self._find(target)
        self._mutate(target, found["type"], "stop", {"id": found["state"]["id"]})

    def restore(self, target: str, state: str) -> None:
        found = self._find(target)
        status, _, default = state.partition(":")
        selector = {"selector": {"repositoryLocationName": found["location"],
                                 "repositoryName": found["repo"], f"{found['type']}Name": target}}
        if default:
            self._mutate(target, found["type"], "reset", selector)
        elif status == RUNNING:
            self._mutate(target, found["type"], "start", selector)
        elif found["state"]["status"] == "RUNNING":
            self._mutate(target, found["type"], "stop", {"id": found["state"]["id"]})

    def _find(self, target: str) -> dict:
        data = self._post(_INSTIGATORS, {}, target)["repositoriesOrError"]
        if data["__typename"] != "RepositoryConnection":
            raise ControlError(f"Dagster could not list repositories: {data.get('message')}")
        for repo in data["nodes"]:
            for kind in ("schedule", "sensor"):
                for item in repo[f"{kind}s"]:
                    if item["name"] == target:
                        return {"type": kind, "repo": repo["name"], "location": repo["location"]["name"],
                                "canReset": item["canReset"], "state": item[f"{kind}State"]}
        raise ControlError(f"no Dagster schedule or sensor named {target!r} at {self.endpoint}")

    def _mutate(self, target: str, kind: str, action: str, variables: dict) -> None:
        result = self._post(_MUTATIONS[kind, action] % _RESULT, variables, target)["result"]
        if result["__typename"] in ("PythonError", "UnauthorizedError") or result[
                "__typename"].endswith("NotFoundError"):
            raise ControlError(f"Dagster refused to {action} {kind} {target!r}: "
                               f"{result.get('message', result['__typename'])}")

    def _post(self, query: str, variables: dict, target: str) -> dict:
        try:
            response = requests.post(self.endpoint, json={"query": query, "variables": variables},
                                     timeout=self.timeout)
            response.raise_for_status()
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise ControlError(f"Dagster GraphQL at {self.endpoint} failed for {target!r}: {exc}") \
                from exc
        if body.get("errors"):
            raise ControlError(f"Dagster GraphQL error for {target!r}: {body['errors'][0]['message']}")
        return body["data"]


class AirflowControl:
    """Pauses and unpauses the DAG named by ``pipelines.target`` through Airflow's stable REST API.

    ``base_url`` is the webserver root (``http://airflow:8080``); ``auth`` a
    ``(user, password)`` pair for basic auth, if the deployment uses it.
    """

    def __init__(self, base_url: str, *, auth: tuple[str, str] | None = None,
                 timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout

    def state(self, target: str) -> str:
        return PAUSED if self._request("GET", target)["is_paused"] else RUNNING

    def pause(self, target: str) -> None:
        self._request("PATCH", target, paused=True)

    def restore(self, target: str, state: str) -> None:
        self._request("PATCH", target, paused=state != RUNNING)

    def _request(self, method: str, dag_id: str, paused: bool | None = None) -> dict:
        url = f"{self.base_url}/api/v1/dags/{requests.utils.quote(dag_id, safe='')}"
        kwargs = {"params": {"update_mask": "is_paused"}, "json": {"is_paused": paused}} \
            if method == "PATCH" else {}
        try:
            response = requests.request(method, url, auth=self.auth, timeout=self.timeout, **kwargs)
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as exc:
            raise ControlError(f"Airflow {method} {url} failed for DAG {dag_id!r}: {exc}") from exc
