"""Start ``dagster dev`` (or ``hawkeye-dagster demo``) for a test, and stop it with all it started.

A process is started as the leader of a new session, so everything it starts (the
webserver, the daemon, code servers, run workers, and the process group that ``demo`` gives
``dagster dev``) shares that session id however it groups itself. :func:`stop` signals every
process of the session, escalates to SIGKILL after a grace period and checks that none is
left: ``dagster dev`` alone takes about 85 s to honour a SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

#: how long the session gets to stop on SIGTERM before it is killed
GRACE_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """``argv`` as the leader of a new session, its output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def start_demo(lake: Path, folder: Path, cwd: Path) -> tuple[subprocess.Popen, int]:
    """``hawkeye-dagster demo --port N`` on a free port, as a user runs it: none of the test's
    own ``HAWKEYE_``/``DAGSTER_`` settings, a fresh ``HAWKEYE_HOME`` in ``folder`` whose demo
    lake is ``lake`` (generated already), its output in ``folder/demo.log``."""
    home = folder / "home"
    home.mkdir()
    (home / "demo-lake").symlink_to(lake)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAWKEYE_", "DAGSTER_"))}
    demo = start([sys.executable, "-m", "hawkeye_dagster.cli", "demo", "--port", str(port)],
                 env={**env, "HAWKEYE_HOME": str(home)}, cwd=cwd, log=folder / "demo.log")
    return demo, port


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, session, ..."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def session_processes(session: int) -> list[int]:
    """The live processes (zombies are dead) of ``session``."""
    pids = []
    for entry in Path("/proc").iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat and int(stat[3]) == session and stat[0] != "Z":
            pids.append(int(entry.name))
    return pids


def children(pid: int) -> list[int]:
    """The live direct children of ``pid``."""
    return [p for p in session_processes(os.getsid(pid))
            if (stat := _stat(p)) and int(stat[1]) == pid]


def wait_until_serving(port: int, process: subprocess.Popen, timeout: float = 180) -> None:
    """Until the webserver on ``port`` answers; fails if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before serving on {port}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"nothing served on port {port} within {timeout} s")


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def left_after(session: int, timeout: float) -> list[int]:
    """The processes of ``session`` still alive once it empties or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while (left := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def stop(process: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM to every process of ``process``'s session, SIGKILL to what is left after
    ``grace`` seconds; raises if any process survives that."""
    session = process.pid
    _signal_all(session_processes(session), signal.SIGTERM)
    left = left_after(session, grace)
    if left:
        _signal_all(left, signal.SIGKILL)
        left = left_after(session, 5)
    process.wait(timeout=5)
    assert not left, f"processes {left} of session {session} survived SIGKILL"
