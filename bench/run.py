"""Runs every ``bench/bench_*.py`` and records the figures.

Each module exposes ``run(quick: bool) -> list[dict]``; each dict holds
``name, project_s, reference, reference_s, ratio, params`` with
``ratio = reference_s / project_s`` (higher is better) against a real
reference implementation. A figure measured against a target rather than
against anything (a latency budget) has no reference and no ratio, and carries
``target_s`` instead. Results go to ``bench/results.json`` and, as markdown
tables (comparisons; targets), into the README between the
``bench:start``/``bench:end`` markers.

    python -m bench [--quick] [--scale reduced] [--only NAME ...]

``--scale reduced`` runs the modules whose ``run`` takes a ``scale`` (the
drift comparison, the fleet day) at a size a shared 2-core machine finishes in
minutes; each of their records says which scale it ran at.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import re
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
README = BENCH_DIR.parent / "README.md"
REQUIRED = ("name", "project_s", "reference", "reference_s", "ratio", "params")


def record(name: str, project_s: float, reference: str, reference_s: float,
           params: dict) -> dict:
    """One benchmark result in the shape :data:`REQUIRED` names."""
    return {"name": name, "project_s": project_s, "reference": reference,
            "reference_s": reference_s, "ratio": reference_s / project_s, "params": params}


def discover() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def _params(r: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in (r.get("params") or {}).items())


def markdown_table(results: list[dict]) -> str:
    """The comparisons (and curves without a reference), then the figures held to a target."""
    lines = [
        "| benchmark | project (s) | reference | reference (s) | ratio (ref/project) | params |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if r.get("target_s") is None:
            lines.append(f"| `{r['name']}` | {_fmt(r['project_s'])} | {r['reference']} | "
                         f"{_fmt(r['reference_s'])} | {_fmt(r['ratio'])} | {_params(r)} |")
    targets = [r for r in results if r.get("target_s") is not None]
    if targets:
        lines += ["", "Held to a target (no reference, so no ratio):", "",
                  "| benchmark | measured (s) | target (s) | met | params |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| `{r['name']}` | {_fmt(r['project_s'])} | {_fmt(r['target_s'])} | "
                  f"{'yes' if r['project_s'] <= r['target_s'] else 'no'} | {_params(r)} |"
                  for r in targets]
    return "\n".join(lines)


def update_readme(table: str, header: str) -> None:
    if not README.exists():
        return
    text = README.read_text()
    block = f"<!-- bench:start -->\n{header}\n\n{table}\n<!-- bench:end -->"
    new, count = re.subn(r"<!-- bench:start -->.*?<!-- bench:end -->", block, text, flags=re.S)
    if count:
        README.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute each")
    parser.add_argument("--only", nargs="*", help="module names (e.g. bench_read) to run")
    parser.add_argument("--scale", choices=("full", "reduced"), default="full",
                        help="size of the modules that have one (default: full)")
    args = parser.parse_args(argv)

    modules = args.only or discover()
    previous = {r["name"]: r for r in json.loads(RESULTS.read_text())["results"]} \
        if RESULTS.exists() and not args.quick else {}
    failures = 0
    for name in modules:
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            run = importlib.import_module(f"bench.{name}").run
            scaled = "scale" in inspect.signature(run).parameters
            results = (run(quick=args.quick, scale=args.scale) if scaled
                       else run(quick=args.quick))
        except Exception:
            traceback.print_exc()
            failures += 1
            continue
        for r in results:
            missing = [k for k in REQUIRED if k not in r]
            if missing:
                raise ValueError(f"{name}: result {r.get('name')} lacks {missing}")
            r["module"] = name
            previous[r["name"]] = r
            print(f"   {r['name']}: ratio {_fmt(r['ratio'])}", file=sys.stderr)
        print(f"   ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    results = sorted(previous.values(), key=lambda r: (r["module"], r["name"]))
    header = (f"Measured on {platform.machine()}, {platform.python_version()}, "
              f"{'quick' if args.quick else 'full'} run"
              f"{', reduced scale' if args.scale == 'reduced' else ''}, "
              f"{time.strftime('%Y-%m-%d')} (modules: {', '.join(modules)}; other rows kept "
              "from earlier runs).")
    if not args.quick:
        RESULTS.write_text(json.dumps({"machine": platform.platform(), "results": results},
                                      indent=2, default=str) + "\n")
        update_readme(markdown_table(results), header)
    print(markdown_table(results))
    return 1 if failures else 0
