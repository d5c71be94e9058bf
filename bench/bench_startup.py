"""Start-up: the commands a user types first, against the floor of any dagster command.

- ``startup_help``: ``hawkeye-dagster --help``;
- ``startup_triage_help``: ``hawkeye-dagster triage --help``;
- ``startup_validate_small_lake``: ``hawkeye-dagster validate`` of the tests' small
  lake (``tests/lake_factory.py``: 17 tables, 2 models, 3 snapshot artifacts opened),
  and ``startup_validate_small_lake_skip_artifacts`` with ``--skip-artifacts``.

The reference is ``python -c "import dagster"``: starting Python (``python -c
pass``, in ``params``) plus the import floor of dagster, which every command that
touches Dagster pays; ratio = reference / ours. Each command runs as a fresh
process, all of them taking turns for several rounds (the machine is shared),
best of the rounds. The ratio is on CPU time (user + system of the process), wall
time is in ``params`` beside the target (1 s for the help, 3 s for validate).
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from bench.timing import interleaved

REPO = Path(__file__).resolve().parents[1]
LAKE = REPO / "bench" / ".work" / "startup-lake"
COMMAND = str(Path(sys.executable).parent / "hawkeye-dagster")
TARGETS_S = {"startup_help": 1.0, "startup_triage_help": 1.0,
             "startup_validate_small_lake": 3.0,
             "startup_validate_small_lake_skip_artifacts": 3.0}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _lake() -> Path:
    if not (LAKE / "models").exists():
        subprocess.run([sys.executable, "-c", f"from lake_factory import write_lake; "
                        f"write_lake({str(LAKE)!r})"],
                       cwd=REPO, env={"PYTHONPATH": str(REPO / "tests")}, check=True)
    return LAKE


def run(quick: bool) -> list[dict]:
    lake = str(_lake())
    commands = {
        "pass": [sys.executable, "-c", "pass"],
        "dagster": [sys.executable, "-c", "import dagster"],
        "startup_help": [COMMAND, "--help"],
        "startup_triage_help": [COMMAND, "triage", "--help"],
        "startup_validate_small_lake": [COMMAND, "validate", "--lake", lake],
        "startup_validate_small_lake_skip_artifacts": [COMMAND, "validate", "--lake", lake,
                                                       "--skip-artifacts"],
    }
    for argv in commands.values():  # each must succeed; also warms the page cache for all
        subprocess.run(argv, check=True, capture_output=True)
    times = interleaved({name: (lambda argv=argv: subprocess.run(argv, check=True,
                                                                 capture_output=True))
                         for name, argv in commands.items()},
                        2 if quick else 5, cpu_clock=_children_cpu)
    floor_wall, floor_cpu = times["dagster"]
    return [{
        "name": name, "project_s": times[name][1],
        "reference": 'python -c "import dagster" (Python start-up + the dagster import floor)',
        "reference_s": floor_cpu, "ratio": floor_cpu / times[name][1],
        "params": {"timing": "best CPU time of interleaved rounds", "wall_s": times[name][0],
                   "reference_wall_s": floor_wall, "python_pass_s": times["pass"][1],
                   "target_s": TARGETS_S[name], "rounds": 2 if quick else 5},
    } for name in TARGETS_S]


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
