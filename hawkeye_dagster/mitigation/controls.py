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
#: how much of an error answer's body a :class:`ControlError` keeps
BODY_LIMIT = 500


class ControlError(HawkeyeError):
    """The orchestrator refused or failed a request; names the pipeline target.

    ``status`` and ``body`` (truncated to :data:`BODY_LIMIT`) are the HTTP answer's when there
    was one: orchestrators say there why they refused (Airflow 3, for one, that ``/api/v1``
    is gone), and the message is what the audit trail keeps.
    """

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None):
        super().__init__(message)
        self.status, self.body = status, body


class PipelineControl(Protocol):
    def state(self, target: str) -> str:
        """The target's current state (``running...`` or ``paused...``)."""

    def pause(self, target: str) -> None:
        """Stop the target from producing new runs."""

    def restore(self, target: str, state: str) -> None:
        """Put the target back into a state :meth:`state` returned."""


def _call(method: str, url: str, what: str, **kwargs) -> dict:
    """One HTTP request's JSON answer; a failure raises a :class:`ControlError` that starts
    with ``what`` (the orchestrator and the target) and keeps the status and body."""
    try:
        response = requests.request(method, url, **kwargs)
    except requests.RequestException as exc:
        raise ControlError(f"{what}: {method} {url} failed: {exc}") from exc
    if response.status_code >= 400:
        body = response.text[:BODY_LIMIT]
        raise ControlError(f"{what}: {method} {url} answered HTTP {response.status_code}: {body}",
                           status=response.status_code, body=body)
    try:
        return response.json()
    except ValueError as exc:
        raise ControlError(f"{what}: {method} {url} answered no JSON: "
                           f"{response.text[:BODY_LIMIT]}", status=response.status_code) from exc


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

    ``url`` is the webserver's address (e.g. ``http://localhost:3000``, or a Dagster+
    deployment's ``https://<org>.dagster.cloud/<deployment>``, which wants a user ``token``
    in the ``Dagster-Cloud-Api-Token`` header). The target is looked up by name in every
    loaded code location. States are ``running``/``paused`` with ``:default`` when the
    status is the one declared in code (restored by a reset rather than an explicit start).

    Plain ``requests`` rather than ``dagster-graphql``'s client: that client only launches
    and watches runs and reloads code locations, nothing for schedules or sensors.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0):
        self.endpoint = url.rstrip("/") + "/graphql"
        self.headers = {"Dagster-Cloud-Api-Token": token} if token else {}
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
        body = _call("POST", self.endpoint, f"Dagster GraphQL for {target!r}", headers=self.headers,
                     json={"query": query, "variables": variables}, timeout=self.timeout)
        if body.get("errors"):
            raise ControlError(f"Dagster GraphQL error for {target!r}: {body['errors'][0]['message']}")
        return body["data"]


class AirflowControl:
    """Pauses and unpauses the DAG named by ``pipelines.target`` through Airflow's REST API.

    ``base_url`` is the API server's root (``http://airflow:8080``). Airflow 3 serves
    ``/api/v2`` to bearer tokens only: a ``token`` issued beforehand (SSO set-ups), or one
    asked of ``/auth/token`` with ``username``/``password`` and asked again once when the API
    answers 401, since tokens expire. Airflow 2 serves ``/api/v1`` with basic auth (its
    ``basic_auth`` API backend). ``api`` (``v1``/``v2``) picks the API; without it the
    version endpoints (``/api/v2``'s, then ``/api/v1``'s) say which on first use.
    """

    def __init__(self, base_url: str, *, username: str | None = None, password: str | None = None,
                 token: str | None = None, api: str | None = None, timeout: float = 30.0):
        if api not in (None, "v1", "v2"):
            raise ValueError(f"Airflow API must be 'v1' or 'v2', not {api!r}")
        self.base_url = base_url.rstrip("/")
        self.username, self.password, self.token = username, password or "", token
        self.api = api
        self.timeout = timeout

    def state(self, target: str) -> str:
        return PAUSED if self._dag(target)["is_paused"] else RUNNING

    def pause(self, target: str) -> None:
        self._dag(target, paused=True)

    def restore(self, target: str, state: str) -> None:
        self._dag(target, paused=state != RUNNING)

    def _dag(self, dag_id: str, paused: bool | None = None) -> dict:
        """GET the DAG, or PATCH its ``is_paused`` when ``paused`` is given."""
        what = f"Airflow DAG {dag_id!r}"
        api = self.api or self._probe(what)
        url = f"{self.base_url}/api/{api}/dags/{requests.utils.quote(dag_id, safe='')}"
        kwargs = {"timeout": self.timeout}
        if paused is not None:
            kwargs |= {"params": {"update_mask": "is_paused"}, "json": {"is_paused": paused}}
        method = "GET" if paused is None else "PATCH"
        if api == "v1":
            auth = (self.username, self.password) if self.username else None
            return _call(method, url, what, auth=auth, **kwargs)
        if self.token is None and self.username:
            self.token = self._issue_token(what)
        try:
            return _call(method, url, what, headers=self._bearer(), **kwargs)
        except ControlError as exc:
            if exc.status != 401 or not self.username:
                raise
        self.token = self._issue_token(what)
        return _call(method, url, what, headers=self._bearer(), **kwargs)

    def _bearer(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _issue_token(self, what: str) -> str:
        answer = _call("POST", f"{self.base_url}/auth/token",
                       f"{what} (token for {self.username!r})", timeout=self.timeout,
                       json={"username": self.username, "password": self.password})
        return answer["access_token"]

    def _probe(self, what: str) -> str:
        """The API the server speaks: ``v2`` (Airflow 3) or ``v1`` (Airflow 2), asked once.

        A version endpoint that answers at all, even 401/403, exists; 404 means the other.
        """
        for api in ("v2", "v1"):
            try:
                _call("GET", f"{self.base_url}/api/{api}/version", what, timeout=self.timeout)
            except ControlError as exc:
                if exc.status == 404:
                    continue
                if exc.status not in (401, 403):
                    raise
            self.api = api
            return api
        raise ControlError(f"{what}: {self.base_url} serves neither /api/v2 nor /api/v1 "
                           "(is it Airflow's API server?)", status=404)
