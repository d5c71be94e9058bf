"""A local stand-in for Airflow's REST API, a test double that answers as Airflow 3 or 2 does.

Airflow 3 (``airflow=3``): ``/api/v2`` with bearer tokens from ``POST /auth/token``, an
expired token answered 401, and ``/api/v1`` answered 404 with the body Airflow 3 sends.
Airflow 2 (``airflow=2``): ``/api/v1`` with basic auth, no ``/api/v2``. With ``users`` (name
-> password) requests must authenticate; without, they need not. The real servers are
exercised in ``test_airflow_real.py``.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

V1_REMOVED = {"error": "/api/v1 has been removed in Airflow 3, please use its upgraded version "
                       "/api/v2 instead."}


class AirflowStub:
    """Serves ``GET``/``PATCH /api/{v1|v2}/dags/{dag_id}`` and records every PATCH.

    ``expire_tokens()`` makes every token issued so far answer 401, as Airflow does once
    ``[api_auth] jwt_expiration_time`` has passed.
    """

    def __init__(self, paused: dict[str, bool], fail: bool = False, *, airflow: int = 3,
                 users: dict[str, str] | None = None):
        self.paused, self.fail, self.patches = dict(paused), fail, []
        self.api = "v2" if airflow == 3 else "v1"
        self.users, self.tokens, self.expired = users, set(), set()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def _route(self):
                """The DAG and query of a DAG request, or ``None`` once an answer was sent."""
                url = urlparse(self.path)
                if url.path.startswith("/api/v1") and stub.api == "v2":
                    return self._reply(404, V1_REMOVED)
                if not url.path.startswith(f"/api/{stub.api}/"):
                    return self._reply(404, {"detail": "Not Found"})
                if url.path == f"/api/{stub.api}/version":
                    return self._reply(200, {"version": "3.0.0" if stub.api == "v2" else "2.11.0"})
                refused = stub.refusal(self.headers.get("Authorization"))
                if refused:
                    return self._reply(*refused)
                if stub.fail:
                    return self._reply(500, {"title": "boom"})
                dag = unquote(url.path.removeprefix(f"/api/{stub.api}/dags/"))
                if dag not in stub.paused:
                    return self._reply(404, {"title": "DAG not found"})
                return dag, parse_qs(url.query)

            def do_GET(self):
                if routed := self._route():
                    self._reply(200, {"dag_id": routed[0], "is_paused": stub.paused[routed[0]]})

            def do_POST(self):
                if self.path != "/auth/token" or stub.api != "v2":
                    return self._reply(404, {"detail": "Not Found"})
                body = self._body()
                if (stub.users or {}).get(body.get("username")) != body.get("password"):
                    return self._reply(401, {"detail": "Invalid credentials"})
                token = f"token-{len(stub.tokens)}"
                stub.tokens.add(token)
                self._reply(201, {"access_token": token})

            def do_PATCH(self):
                if routed := self._route():
                    dag, query = routed
                    body = self._body()
                    stub.patches.append((dag, query.get("update_mask"), body))
                    stub.paused[dag] = body["is_paused"]
                    self._reply(200, {"dag_id": dag, "is_paused": body["is_paused"]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def refusal(self, authorization: str | None) -> tuple[int, dict] | None:
        """Airflow's answer to a request that does not authenticate, else ``None``."""
        if self.users is None:
            return None
        scheme, _, credential = (authorization or "").partition(" ")
        if self.api == "v1":
            user, _, password = base64.b64decode(credential or "").decode().partition(":")
            ok = scheme == "Basic" and self.users.get(user) == password
            return None if ok else (403, {"title": "Forbidden", "status": 403})
        if scheme != "Bearer" or credential in self.expired:
            return 401, {"detail": "Token Expired" if credential in self.expired
                         else "Not authenticated"}
        return None if credential in self.tokens else (403, {"detail": "Invalid JWT token"})

    def expire_tokens(self) -> None:
        self.expired |= self.tokens

    def close(self):
        self.server.shutdown()
        self.server.server_close()
