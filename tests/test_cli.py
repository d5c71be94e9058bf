"""What a user sees from the command line: exit statuses, one-line reasons, the summaries."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hawkeye_dagster.cli import build_parser, main
from hawkeye_dagster.incidents import REPORTS_DIR

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    return one_line(capsys)


def test_triage_of_an_empty_folder_names_the_missing_tables(tmp_path, capsys):
    assert main(["triage", "--lake", str(tmp_path)]) == 2
    line = one_line(capsys)
    assert "required tables missing" in line and str(tmp_path) in line
    assert "'topline_metrics'" in line and "'serving_samples'" in line and "'models'" in line
    assert "'feature_alerts'" not in line  # optional


@pytest.mark.parametrize("option", ["--start", "--end"])
def test_a_bad_timestamp_names_the_option_and_the_format(tmp_path, capsys, option):
    line = usage_error(["triage", "--lake", str(tmp_path), option, "yesterday"], capsys)
    assert f"argument {option}: 'yesterday' is not a timestamp" in line
    assert "ISO 8601" in line and "2026-10-14T06:00" in line


@pytest.mark.parametrize("command", ["triage", "validate"])
def test_a_file_given_as_lake_is_named_as_a_file(tmp_path, capsys, command):
    lake = tmp_path / "lake.parquet"
    lake.write_bytes(b"PAR1")
    line = usage_error([command, "--lake", str(lake)], capsys)
    assert f"argument --lake: {lake} is a file, not a lake folder" in line


def test_a_window_without_rows_is_bad_input(simulated, capsys):
    lake, _ = simulated("clean")
    assert main(["triage", "--lake", str(lake), "--start", "2020-01-01",
                 "--end", "2020-01-08"]) == 2
    line = one_line(capsys)
    assert "tables 'topline_metrics' and 'serving_samples', column 'ts': no rows in the " \
           "window 2020-01-01T00:00Z .. 2020-01-08T00:00Z" in line
    assert "the lake's rows span 2026-" in line
    assert capsys.readouterr().out == ""


def test_triage_help_documents_exit_statuses_and_automatic_detection(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["triage", "--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "detects the incidents of the window by itself" in text
    assert "triages the most severe" in text
    assert "0 a report was printed, whatever its verdict" in text
    assert "2 bad input" in text and "1 anything else" in text


@pytest.mark.parametrize("argv", [["--help"], ["triage", "--help"], ["validate", "--help"]])
def test_help_imports_neither_torch_nor_dagster(argv):
    # a fresh interpreter: what --help pays for at start-up, without timing it
    code = ("import sys\nfrom hawkeye_dagster.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'dagster', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_every_command_parses_with_all_commands_built():
    parser = build_parser()
    assert parser.parse_args(["simulate", "--out", "x", "--scale", "small"]).scale == "small"
    assert parser.parse_args(["backfill", "--lake", "x", "--assets", "features"]).assets \
        == "features"


def test_automatic_triage_lists_the_other_incidents_with_their_commands(simulated, capsys):
    lake, _ = simulated("demo")
    assert main(["triage", "--lake", str(lake)]) == 0
    out = capsys.readouterr().out
    listed = out.split("Other incidents in the window (")[1]
    commands = [shlex.split(line) for line in listed.splitlines()
                if line.strip().startswith("hawkeye-dagster triage")]
    assert len(commands) == int(listed.split(")")[0]) >= 2
    selected = out.split("Entry:   automatic incident detection -> top-line anomaly in ")[1]
    product, segment = selected.split(" ")[0].split("/")
    assert ["--product", product, "--segment", segment] not in [c[4:8] for c in commands]
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(command[1:])
        assert args.lake == str(lake) and args.start < args.end
    # a listed command triages its incident
    command = next(c for c in commands if "--snapshot" in c)
    assert main(command[1:]) == 0
    assert f"Entry:   new snapshot {command[command.index('--snapshot') + 1]}" in \
        capsys.readouterr().out


def test_headless_demo_reads_as_text_and_ends_with_a_summary(simulated, tmp_path, monkeypatch,
                                                            capsys):
    from hawkeye_dagster.dagster_runner import headless_demo

    lake, _ = simulated("demo")
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("HAWKEYE_STORAGE", str(tmp_path / "outputs"))
    progress: list[str] = []
    assert headless_demo(lake, progress=progress.append) == 0
    out = capsys.readouterr().out
    assert not any("{" in line for line in progress), progress
    assert any(line.startswith("[1/") and "triage of top-line anomaly in " in line
               for line in progress)
    body, summary = out.split("Incidents triaged: ")
    # mp_value-v3's tensor-by-tensor finding is printed once, for the first of its incidents
    assert body.count("tensor(s) changed unusually against mp_value-v2") == 1
    assert "snapshot_diagnosis: see root cause 1" in body
    count = int(summary.split("\n")[0])
    header = summary.splitlines()[1].split()
    assert header == ["#", "entry", "verdict", "top", "cause", "confidence", "explains"]
    rows = summary.splitlines()[2:2 + count]
    assert all("root cause found" in r or "no issue" in r or "inconclusive" in r for r in rows)
    assert "snapshot mp_value-v3" in summary
    # each top-line degradation is its own incident, as the sensor opens it: the transform
    # change before mp_value-v3 was published is not blamed on that snapshot
    assert "lineage_change xf.price_stats" in summary
    paths = [Path(line.split(". ", 1)[1]) for line in summary.split("Reports")[1].splitlines()[1:]]
    assert len(paths) == count
    assert all(p.exists() and p.parent == tmp_path / "outputs" / REPORTS_DIR for p in paths)


@pytest.mark.parametrize("packaged, shared", [
    ("docs/contract.md", "CONTRACT.md"),
    ("hawkeye_dagster/triage/report.schema.json", "report.schema.json"),
])
def test_the_shipped_contract_is_the_shared_one(packaged, shared):
    if not SHARED.is_dir():
        pytest.skip("no ../shared beside the checkout to compare the shipped copies with")
    assert (ROOT / packaged).read_bytes() == (SHARED / shared).read_bytes(), (
        f"{packaged} differs from ../shared/{shared}: copy it over")
