"""A local stand-in for Airflow's stable REST API (``/api/v1/dags/{dag_id}``), a test double."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


class AirflowStub:
    """Serves ``GET``/``PATCH /api/v1/dags/{dag_id}`` and records every PATCH."""

    def __init__(self, paused: dict[str, bool], fail: bool = False):
        self.paused, self.fail, self.patches = dict(paused), fail, []
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

            def _dag(self):
                url = urlparse(self.path)
                return unquote(url.path.removeprefix("/api/v1/dags/")), parse_qs(url.query)

            def do_GET(self):
                dag, _ = self._dag()
                if stub.fail:
                    return self._reply(500, {"title": "boom"})
                if dag not in stub.paused:
                    return self._reply(404, {"title": "DAG not found"})
                self._reply(200, {"dag_id": dag, "is_paused": stub.paused[dag]})

            def do_PATCH(self):
                dag, query = self._dag()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.patches.append((dag, query.get("update_mask"), body))
                stub.paused[dag] = body["is_paused"]
                self._reply(200, {"dag_id": dag, "is_paused": body["is_paused"]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
