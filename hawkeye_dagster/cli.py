"""The ``hawkeye-dagster`` command.

Exit statuses follow the contract: 0 on success, 2 for bad input (with a
one-line reason on stderr naming the table, file or column), 130 when interrupted
(Ctrl-C: the temporary storage of a ``triage`` is removed first), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from typing import NoReturn

from hawkeye_dagster.errors import ContractError, HawkeyeError, UnknownIdError

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2
#: the shell's status for a command ended by SIGINT (128 + 2)
EXIT_INTERRUPTED = 130

TRIAGE_EPILOG = """\
entry:
  --product [--segment], --snapshot or --feature start the triage there. With none
  of them it detects the incidents of the window by itself (top-line anomalies,
  warning and critical feature alerts, new snapshots), triages the most severe
  and lists the others with the command that triages each.

window:
  --start/--end default to the 7 days up to the latest ts of topline_metrics and
  serving_samples; the window must hold rows of one of them.

exit status:
  0  a report was printed, whatever its verdict (root cause found, no issue,
     inconclusive)
  2  bad input (a bad option, a missing or broken lake, an unknown id, a window
     without rows), with one line on stderr naming the option, table, file or column
  130  interrupted (Ctrl-C); nothing temporary is left behind
  1  anything else
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as the contract's bad input: exit 2 with one line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message}; see {self.prog} --help\n")


def _timestamp(value: str):
    """An ISO-8601 option value as a UTC timestamp; argparse names the option when refused."""
    import pandas as pd

    from hawkeye_dagster.time_range import as_utc

    try:
        ts = as_utc(value)
    except ValueError:
        ts = pd.NaT
    if pd.isna(ts):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a timestamp; use ISO 8601 such as 2026-10-14, 2026-10-14T06:00 "
            "or 2026-10-14T06:00+02:00 (UTC if naive)")
    return ts


def _lake_folder(value: str) -> str:
    """A local file is refused here: the lake reader could only say no lake folder is there."""
    if os.path.isfile(value):
        raise argparse.ArgumentTypeError(
            f"{value} is a file, not a lake folder (a lake is a folder holding one folder of "
            "Parquet files per table)")
    return value


def _progress(message: str) -> None:
    print(f"[hawkeye {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _add_source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--lake", type=_lake_folder,
                       help="telemetry lake: a folder or fsspec URL of Parquet tables")
    group.add_argument("--sql", metavar="URL", help="telemetry in a SQL database (SQLAlchemy URL)")


def _cmd_simulate(args: argparse.Namespace) -> int:
    from hawkeye_dagster.simulate import simulate

    truth = simulate(args.out, scenario=args.scenario, seed=args.seed, scale=args.scale,
                     encoding=args.encoding, factors=args.factor or (),
                     progress=_progress)
    names = ", ".join(i["name"] for i in truth["incidents"])
    out = args.out.rstrip("/")
    _progress(f"wrote {out} (incidents: {names}); ground truth in {out}.truth.json")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from hawkeye_dagster.lake.open import open_lake
    from hawkeye_dagster.lake.validate import validate_lake

    reader = open_lake(lake=args.lake, sql_url=args.sql)
    problems = validate_lake(reader, check_artifacts=not args.skip_artifacts)
    for problem in problems:
        print(str(problem), file=sys.stderr)
    if problems:
        return EXIT_BAD_INPUT
    print(f"{reader.location}: conforms to the contract", file=sys.stderr)
    return EXIT_OK


def _cmd_triage(args: argparse.Namespace) -> int:
    from hawkeye_dagster.dagster_runner import triage_command

    return triage_command(args, progress=_progress)


def _cmd_backfill(args: argparse.Namespace) -> int:
    from hawkeye_dagster.backfill import backfill_command

    return backfill_command(lake=args.lake, sql_url=args.sql, start=args.start, end=args.end,
                            models=args.models, assets=args.assets, wait_done=args.wait,
                            register_only=args.register_only, progress=_progress)


def _cmd_demo(args: argparse.Namespace) -> int:
    from hawkeye_dagster.demo import run_demo

    return run_demo(headless=args.headless, port=args.port, progress=_progress)


def _simulate_arguments(sim: argparse.ArgumentParser) -> None:
    from hawkeye_dagster.simulate import FACTORS, SCALES, SCENARIOS

    sim.add_argument("--out", required=True, help="folder to write the lake to")
    sim.add_argument("--scenario", default="demo", choices=SCENARIOS)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--scale", default="small", choices=SCALES)
    sim.add_argument("--encoding", default="varied", choices=("canonical", "varied"),
                     help="how the files encode the data: varied (default) draws one of the "
                          "contract's encodings per file from the seed (timestamp units and "
                          "zones, string types, file splits, batch declarations); canonical "
                          "writes them all alike. The lake's content is the same either way")
    sim.add_argument("--factor", action="append", choices=FACTORS, metavar="FACTOR",
                     help="add a mess factor of real platforms to the scenario (repeatable): "
                          + ", ".join(FACTORS) + " (see hawkeye_dagster.simulate.factors)")
    sim.set_defaults(run=_cmd_simulate)


def _validate_arguments(val: argparse.ArgumentParser) -> None:
    _add_source(val)
    val.add_argument("--skip-artifacts", action="store_true",
                     help="do not open snapshot artifacts (faster)")
    val.set_defaults(run=_cmd_validate)


def _triage_arguments(tri: argparse.ArgumentParser) -> None:
    _add_source(tri)
    tri.add_argument("--start", type=_timestamp, metavar="TS",
                     help="window start (ISO 8601 timestamp, UTC if naive)")
    tri.add_argument("--end", type=_timestamp, metavar="TS",
                     help="window end (ISO 8601 timestamp, UTC if naive)")
    tri.add_argument("--product", help="entry: a top-line anomaly in this product")
    tri.add_argument("--segment", help="with --product: the segment")
    tri.add_argument("--snapshot", help="entry: diagnose this newly published snapshot")
    tri.add_argument("--feature", help="entry: a feature health alert on this feature")
    tri.add_argument("--json", action="store_true", help="print the report as JSON")
    tri.set_defaults(run=_cmd_triage)


def _backfill_arguments(bf: argparse.ArgumentParser) -> None:
    from hawkeye_dagster.backfill import GROUPS, parse_day

    _add_source(bf)
    bf.add_argument("--start", type=parse_day, metavar="D", help="first day (YYYY-MM-DD)")
    bf.add_argument("--end", type=parse_day, metavar="D", help="last day (YYYY-MM-DD)")
    bf.add_argument("--models", nargs="+", metavar="MODEL", help="default: every model")
    bf.add_argument("--assets", default="all", choices=(*GROUPS, "all"),
                    help="snapshots: every snapshot published in the range")
    bf.add_argument("--wait", action="store_true",
                    help="until done; executes it here when no daemon is running")
    bf.add_argument("--register-only", action="store_true",
                    help="only register the lake's partitions")
    bf.set_defaults(run=_cmd_backfill)


def _demo_arguments(demo: argparse.ArgumentParser) -> None:
    from hawkeye_dagster.demo import DEFAULT_PORT

    demo.add_argument("--headless", action="store_true",
                      help="run the diagnostics without the UI and print what they found")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT,
                      help=f"port of the Dagster UI (default {DEFAULT_PORT})")
    demo.set_defaults(run=_cmd_demo)


#: command -> (its subparser's settings, the function adding its arguments)
COMMANDS: dict[str, tuple[dict, Callable[[argparse.ArgumentParser], None]]] = {
    "simulate": ({"help": "write a simulated telemetry lake with known incidents"},
                 _simulate_arguments),
    "validate": ({"help": "check a lake against the telemetry contract"}, _validate_arguments),
    "triage": ({"help": "run the triage decision tree and print the report",
                "description": "Run HawkEye's triage decision tree through Dagster "
                               "(in-process)\nover a lake and print the root-cause report.",
                "epilog": TRIAGE_EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter},
               _triage_arguments),
    "backfill": ({"help": "rerun a range of days as a Dagster asset backfill",
                  "description": "Register the lake's partitions and launch an asset "
                                 "backfill on DAGSTER_HOME (shown on the UI's Backfills "
                                 "page, run by the daemon). Exit 0 when launched (with "
                                 "--wait: all succeeded), 1 if a partition failed, 2 for "
                                 "bad input."},
                 _backfill_arguments),
    "demo": ({"help": "generate the demo lake (once) and start Dagster on it"}, _demo_arguments),
}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, with the arguments of ``commands`` only (of all when None).

    Some commands' options take their choices from heavy modules (the simulator's
    names import torch, the backfill's import dagster); building only the
    command being run keeps ``--help`` and ``validate`` from importing them.
    """
    parser = _Parser(
        prog="hawkeye-dagster",
        description="Root-cause analysis of production ML incidents, on Dagster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (settings, add_arguments) in COMMANDS.items():
        subparser = sub.add_parser(name, **settings)
        if commands is None or name in commands:
            add_arguments(subparser)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first argument that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster flags APIs it calls beta/preview on every load; they are noise on a terminal.
    warnings.filterwarnings("ignore", message=r".*currently in (beta|preview)")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    parser = build_parser([command] if command in COMMANDS else [])
    args = parser.parse_args(argv)
    if getattr(args, "segment", None) and not getattr(args, "product", None):
        parser.error("--segment needs --product")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (ContractError, UnknownIdError) as err:
        print(f"hawkeye-dagster: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HawkeyeError as err:
        print(f"hawkeye-dagster: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("hawkeye-dagster: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
