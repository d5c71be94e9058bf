"""The embedded default: a simulated lake with incidents, a local Dagster home, Dagster on top.

``hawkeye-dagster demo`` needs no configuration: it writes the demo lake under
``HAWKEYE_HOME`` once, points a local ``DAGSTER_HOME`` (SQLite, runs queued two
at a time so SQLite does not lock) at it and starts ``dagster dev`` with the
project's sensors running. ``--headless`` does the diagnostics in-process and
prints what it found.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from hawkeye_dagster import settings

DEMO_SEED = 0
DAGSTER_YAML = """\
# The demo's Dagster instance: SQLite storage under this folder. Runs are
# queued and run two at a time, which SQLite's single writer tolerates; use
# PostgreSQL (see the README) for more concurrency.
concurrency:
  runs:
    max_concurrent_runs: 2
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
        config.write_text(DAGSTER_YAML)
    return home


def _workspace_args() -> list[str]:
    """``-w workspace.yaml`` from a source checkout, else the installed module."""
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    if workspace.exists():
        return ["-w", str(workspace)]
    return ["-m", "hawkeye_dagster.definitions"]


def run_demo(*, headless: bool, progress: Callable[[str], None]) -> int:
    lake = ensure_demo_lake(progress)
    os.environ["HAWKEYE_LAKE"] = str(lake)
    os.environ.pop("HAWKEYE_SQL_URL", None)
    os.environ["DAGSTER_HOME"] = str(ensure_dagster_home())
    if headless:
        from hawkeye_dagster.triage.command import headless_demo

        return headless_demo(lake, progress=progress)
    # the `dagster` installed beside this interpreter, so an unactivated venv works too
    beside = Path(sys.executable).parent / "dagster"
    dagster = str(beside) if beside.exists() else shutil.which("dagster")
    if dagster is None:
        raise RuntimeError("the `dagster` command is not on PATH; install the project first")
    # the pause/resume jobs act on the demo_pipelines location through this webserver
    os.environ.setdefault("HAWKEYE_DAGSTER_URL", "http://localhost:3000")
    progress(f"starting dagster dev (DAGSTER_HOME={os.environ['DAGSTER_HOME']}); "
             "open http://localhost:3000")
    os.execv(dagster, [dagster, "dev", *_workspace_args()])
