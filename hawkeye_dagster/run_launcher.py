"""Dagster's default run launcher, able to tell the run monitor that a run's worker is dead.

The default launcher starts each run in a process of the code server, and
Dagster's run monitoring can only ask a launcher that implements
``check_run_worker_health`` whether that process lives. The default one does
not, so a run whose worker died with its code server (``dagster dev`` or a
host killed mid-run) stays ``STARTED`` forever: its run key keeps the sensor
from launching it again and nothing retries it. :class:`MonitoredRunLauncher`
answers the monitor from two facts: the worker's pid, which the worker itself
records in the run's event log ("Started process for run"), checked on this
host (a pid taken over by a later process does not count, by its start
time); and, where the worker ran on another host, whether the code server
that started it still runs it. A dead worker's run is then marked failed by
the monitor and retried by ``run_retries``; a live one is never touched, so a
retry never runs beside the run it replaces.

Configure it in ``dagster.yaml`` (see ``deploy/dagster.yaml``)::

    run_launcher:
      module: hawkeye_dagster.run_launcher
      class: MonitoredRunLauncher
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from dagster import DagsterEventType, DagsterRun
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.types import GetCurrentRunsResult
from dagster_shared.serdes import deserialize_value

#: tags of the runs that a crash must not lose (diagnostics, incidents, feature monitoring):
#: retried at most this often once their worker is found dead (the instance's ``run_retries``
#: must be enabled; with ``retry_on_asset_or_op_failure: false`` a failing asset is not retried)
CRASH_RETRY_TAGS = {"dagster/max_retries": "2"}
#: the message prefix of the engine event in which a run worker records its pid
WORKER_STARTED = "Started process for run"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname()}
#: slack between a worker's start and the event that records it (clock ticks, event timestamps)
START_SLACK_S = 5.0


class MonitoredRunLauncher(DefaultRunLauncher):
    """:class:`~dagster._core.launcher.DefaultRunLauncher` with run-worker health checks."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        info = json.loads(run.tags.get(GRPC_INFO_TAG, "null"))
        if info is None:
            # not launched through a code server (executed in-process, e.g. by `triage`):
            # nothing here can judge its process; the run's max runtime still applies
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not launched by a code server")
        started = self._worker_started(run.run_id)
        if started is not None and (info.get("socket") or info.get("host") in LOCAL_HOSTS):
            pid, at = started
            if process_started_before(pid, at + START_SLACK_S):
                return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker pid {pid} alive")
            return CheckRunHealthResult(WorkerStatus.FAILED, f"worker pid {pid} is gone")
        return _ask_code_server(info, run.run_id)

    def _worker_started(self, run_id: str) -> tuple[int, float] | None:
        """The pid that the run's worker recorded and when, if it did."""
        for record in self._instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            event = record.dagster_event
            if event is not None and (event.message or "").startswith(WORKER_STARTED):
                pid = event.engine_event_data.metadata.get("pid")
                if pid is not None:
                    return int(pid.value), record.timestamp
        return None


def _ask_code_server(info: dict, run_id: str) -> CheckRunHealthResult:
    """Whether the code server that launched the run still runs it (a gone server: dead)."""
    client = DagsterGrpcClient(port=info.get("port"), socket=info.get("socket"),
                               host=info.get("host", "localhost"),
                               use_ssl=bool(info.get("use_ssl", False)))
    try:
        current = deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs
    except Exception as exc:  # noqa: BLE001 - any failure to reach it means it is gone
        return CheckRunHealthResult(WorkerStatus.FAILED, f"code server unreachable: {exc}")
    if run_id in current:
        return CheckRunHealthResult(WorkerStatus.RUNNING, "running in its code server")
    return CheckRunHealthResult(WorkerStatus.NOT_FOUND, "its code server no longer runs it")


def process_started_before(pid: int, latest: float) -> bool:
    """Whether process ``pid`` lives (not a zombie) and started no later than ``latest`` (epoch
    seconds): a pid reused by a process started after the worker is not the worker."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): only whether the pid exists
        return _exists(pid)
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return False
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK") <= latest


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
