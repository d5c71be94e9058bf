"""The embedded default: a simulated lake with incidents, a local Dagster home, Dagster on top.

``hawkeye-dagster demo`` needs no configuration: it writes the demo lake under
``HAWKEYE_HOME`` once, points a local ``DAGSTER_HOME`` (SQLite, runs queued two
at a time so SQLite does not lock) at it and runs ``dagster dev`` with the
project's sensors running, as a child in a process group of its own: Ctrl-C
or SIGTERM is passed to that whole group, which gets :data:`STOP_GRACE_S` to
shut down before it is killed (``dagster dev`` alone takes over a minute to
honour one), so the demo stops promptly and leaves no process behind.
``--headless`` does the diagnostics in-process and prints what it found.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hawkeye_dagster import settings
from hawkeye_dagster.atomic import write_atomically

DEMO_SEED = 0
DEFAULT_PORT = 3000
#: how long ``dagster dev`` and its processes get to stop after Ctrl-C/SIGTERM before SIGKILL
STOP_GRACE_S = 5.0
DAGSTER_YAML = """\
# The demo's Dagster instance: SQLite storage under this folder. Runs are
# queued and run two at a time, which SQLite's single writer tolerates; use
# PostgreSQL (see the README) for more concurrency.
concurrency:
  runs:
    max_concurrent_runs: 2
# A run whose worker died (dagster dev killed mid-run) is marked failed and
# retried, so every snapshot and incident is diagnosed (docs/operations.md).
run_launcher:
  module: hawkeye_dagster.run_launcher
  class: MonitoredRunLauncher
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_runtime_seconds: 7200
  poll_interval_seconds: 30
  max_resume_run_attempts: 0
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
telemetry:
  enabled: false
"""


def ensure_demo_lake(progress: Callable[[str], None]) -> Path:
    """The demo lake, generated on first use."""
    lake = settings.demo_lake()
    if (lake / "models").exists():
        progress(f"using the demo lake at {lake}")
        return lake
    from hawkeye_dagster.simulate import simulate

    progress(f"generating the demo lake at {lake} (once; about a minute)")
    lake.parent.mkdir(parents=True, exist_ok=True)
    simulate(lake, scenario="demo", seed=DEMO_SEED, scale="small", progress=progress)
    return lake


def ensure_dagster_home() -> Path:
    """``$HAWKEYE_HOME/dagster_home`` with the demo's ``dagster.yaml``."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.home() / "dagster_home").absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        write_atomically(config, DAGSTER_YAML.encode())
    return home


def _workspace_args() -> list[str]:
    """``-w workspace.yaml`` from a source checkout, else the installed module."""
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    if workspace.exists():
        return ["-w", str(workspace)]
    return ["-m", "hawkeye_dagster.definitions"]


def run_demo(*, headless: bool, progress: Callable[[str], None],
             port: int = DEFAULT_PORT) -> int:
    lake = ensure_demo_lake(progress)
    os.environ["HAWKEYE_LAKE"] = str(lake)
    os.environ.pop("HAWKEYE_SQL_URL", None)
    os.environ["DAGSTER_HOME"] = str(ensure_dagster_home())
    if headless:
        from hawkeye_dagster.dagster_runner import headless_demo

        return headless_demo(lake, progress=progress)
    # the `dagster` installed beside this interpreter, so an unactivated venv works too
    beside = Path(sys.executable).parent / "dagster"
    dagster = str(beside) if beside.exists() else shutil.which("dagster")
    if dagster is None:
        raise RuntimeError("the `dagster` command is not on PATH; install the project first")
    # the lake's models (and training partitions) exist before the first sensor tick, so the
    # UI's backfill dialog offers every model at once
    import dagster as dg

    from hawkeye_dagster.backfill import register_lake
    from hawkeye_dagster.lake.open import open_lake

    with dg.DagsterInstance.get() as instance:
        register_lake(instance, open_lake(lake=str(lake)))
    # the pause/resume jobs act on the demo_pipelines location through this webserver
    os.environ.setdefault("HAWKEYE_DAGSTER_URL", f"http://localhost:{port}")
    progress(f"starting dagster dev (DAGSTER_HOME={os.environ['DAGSTER_HOME']}); "
             f"open http://localhost:{port}")
    return supervise([dagster, "dev", "-p", str(port), *_workspace_args()], progress)


def supervise(argv: list[str], progress: Callable[[str], None]) -> int:
    """Run ``argv`` as a child leading a process group of its own until it exits.

    A SIGINT or SIGTERM received here is passed to the whole group; the group is
    SIGKILLed :data:`STOP_GRACE_S` after the first, and whatever of it outlives the child
    is killed too. Returns 0 when stopped that way, else the child's exit status.
    """
    child = subprocess.Popen(argv, process_group=0)
    stop_asked: list[float] = []

    def forward(signum: int, _frame) -> None:
        if not stop_asked:
            progress(f"stopping dagster dev (at most {STOP_GRACE_S:.0f} s)")
        stop_asked.append(time.monotonic())
        _signal_group(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                status = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stop_asked and time.monotonic() - stop_asked[0] > STOP_GRACE_S:
                    _signal_group(child.pid, signal.SIGKILL)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _signal_group(child.pid, signal.SIGKILL)
    return 0 if stop_asked else status


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # the group is gone already
