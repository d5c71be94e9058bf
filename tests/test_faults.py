"""Faults other than a crash: unwritable storage, a writer killed mid-write, a lake file removed
while a run reads it, and ``triage`` interrupted with Ctrl-C.

Each fault is real: a process SIGKILLed or sent SIGINT, a folder that cannot be written (a
file where the folder should be, which stops root too), a file unlinked from under a reader.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hawkeye_dagster.assets.triage import materialize_incident
from hawkeye_dagster.atomic import TEMP_PREFIX, write_atomically
from hawkeye_dagster.definitions import build_defs
from hawkeye_dagster.errors import StorageWriteError
from hawkeye_dagster.incidents import INCIDENTS_DIR, REPORTS_DIR, Incident
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from lake_factory import write_lake

REPO = Path(__file__).resolve().parents[1]
INCIDENT = Incident({"kind": "feature_alert", "feature": "clicks.7d"},
                    start="2026-03-01T00:00:00+00:00", end="2026-03-03T00:00:00+00:00")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_lake(tmp_path_factory.mktemp("faults") / "lake")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_write_into_an_unwritable_folder_names_the_output_and_leaves_nothing(tmp_path):
    (tmp_path / "reports").write_text("a file where the folder should be")
    storage = HawkeyeStorage(root=str(tmp_path))
    with pytest.raises(StorageWriteError, match=r"cannot write .*reports/r\.json"):
        storage.write_json({"a": 1}, "reports", "r.json")
    assert _files(tmp_path) == ["reports"]


def test_a_run_whose_storage_becomes_unwritable_fails_naming_the_path(lake, tmp_path):
    """The incident is written, then the reports folder cannot be: the run fails with the
    report's path, and no report (whole or partial) is left."""
    out = tmp_path / "out"
    (out / REPORTS_DIR).parent.mkdir(parents=True)
    (out / REPORTS_DIR).write_text("not a folder")
    defs = build_defs({"telemetry": TelemetrySource(lake=str(lake)),
                       "storage": HawkeyeStorage(root=str(out))})
    with pytest.raises(StorageWriteError) as raised:
        materialize_incident(defs, INCIDENT)
    assert str(out / REPORTS_DIR) in str(raised.value)
    assert _files(out) == [f"{INCIDENTS_DIR}/{INCIDENT.incident_id}.json", REPORTS_DIR]


def _rewrite_forever(target: str, size: int) -> None:
    for n in range(1_000_000):
        write_atomically(Path(target), bytes([n % 251]) * size)


def test_a_writer_killed_mid_write_leaves_the_old_file_or_the_new_one_whole(tmp_path):
    target, size = tmp_path / "stats.parquet", 8 << 20
    write_atomically(target, b"\0" * size)
    for delay in (0.05, 0.2, 0.45):
        writer = multiprocessing.get_context("spawn").Process(
            target=_rewrite_forever, args=(str(target), size))
        writer.start()
        time.sleep(1.5 + delay)       # past the child's start-up, at some point of a write
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        data = target.read_bytes()
        assert len(data) == size and data == data[:1] * size
        for temp in tmp_path.glob(f"{TEMP_PREFIX}*"):  # a killed write's hidden leftover
            temp.unlink()
    assert _files(tmp_path) == ["stats.parquet"]


def _triage(lake: Path, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    temp = tmp_path / "tmp"
    temp.mkdir()
    log = tmp_path / "triage.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hawkeye_dagster.cli", "triage", "--lake", str(lake), *args],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(temp), "DAGSTER_HOME": ""})
    return process, log


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


@pytest.mark.slow
def test_triage_interrupted_with_ctrl_c_exits_130_and_leaves_no_temporary_folder(lake, tmp_path):
    process, log = _triage(lake, tmp_path, "--feature", "clicks.7d")
    _wait_for(log, "triage of", process)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "tmp").glob("hawkeye-triage-*")):  # into the run: its storage
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130, log.read_text()
    assert "interrupted" in log.read_text() and "Traceback" not in log.read_text()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 1.0])
def test_a_lake_file_removed_while_triage_reads_it_is_a_clear_error_or_a_report(
        lake, tmp_path, delay):
    copy = tmp_path / "lake"
    subprocess.run(["cp", "-r", str(lake), str(copy)], check=True)
    [served] = sorted((copy / "serving_samples").rglob("*.parquet"))[:1]
    process, log = _triage(copy, tmp_path, "--feature", "clicks.7d", "--json")
    _wait_for(log, "triage of", process)
    time.sleep(delay)
    served.unlink()
    status = process.wait(timeout=180)
    text = log.read_text()
    print(f"\nremoved {delay} s into the triage: exit {status}, {text.splitlines()[-1][:160]}")
    assert "Traceback" not in text, text
    if status == 0:
        assert '"verdict"' in text
    else:
        assert status in (1, 2) and served.name in text, text
