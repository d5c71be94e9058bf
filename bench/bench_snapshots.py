"""Snapshot diagnosis benchmarks: weight diffs of large snapshots, and activation capture.

- ``weight_diff_vs_floor``: the history of 5 stable snapshots
  (:func:`weight_change_history`) plus the diff of a new snapshot against the
  latest stable one (:func:`weight_diff`), 100M parameters each (5M quick),
  against the floor: reading the same 6 archives' tensors and one pass
  (a sum) over each. Each side runs in a fresh subprocess, which also reports
  its peak resident memory above what it held after the imports (Linux
  ``VmHWM``, reset through ``/proc/self/clear_refs``); ``peak_over_snapshot``
  compares the diff's with one snapshot's size (target at most 1.5).
- ``activation_capture_vs_forward``: :func:`capture_activations` (every
  node's output summarised, bad rows marked) over 10,000 rows against a plain
  forward pass of the same module and rows.
- ``snapshot_publication_to_report`` (full runs only, ~3 minutes): the slow
  end-to-end test under ``dagster dev`` (webserver and daemon on a simulated
  lake): seconds from a snapshot row appearing in the lake to its report
  materialized; the 90 s target is ``target_s`` (there is no reference).

Exported snapshots are cached under ``bench/.work/`` (gitignored).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".work" / "snapshots"
E2E_TEST = "tests/test_snapshot_e2e.py::test_dagster_dev_diagnoses_a_published_snapshot"
E2E_TARGET_S = 90.0
LAYERS = 10

_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from hawkeye_dagster.gather.weights import weight_change_history, weight_diff
from hawkeye_dagster.snapshot_io import SnapshotWeights

def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field))
    return int(line.split()[1])

mode, paths = sys.argv[1], sys.argv[2:]
with open("/proc/self/clear_refs", "w") as fh:  # restart the peak (VmHWM) after the imports
    fh.write("5")
before = status("VmRSS:")
start = time.perf_counter()
if mode == "project":
    history = weight_change_history(paths[:-1])
    diff = weight_diff(paths[-1], paths[-2], history)
    flagged = int(diff["flagged"].sum())
else:
    flagged = 0
    for path in paths:
        with SnapshotWeights(path) as weights:
            for name in weights.names:
                weights.tensor(name).sum()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_kib": status("VmHWM:") - before, "flagged": flagged}))
"""


class _Layers(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layers = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(LAYERS)))

    def forward(self, x):
        return self.layers(x)


def _snapshots(params: int) -> list[Path]:
    """5 stable snapshots and a new one (last) of a ``LAYERS``-layer network of ``params`` parameters."""
    width = int(np.sqrt(params / LAYERS))
    folder = WORK / f"w{width}"
    paths = [folder / f"stable-{k}.pt2" for k in range(5)] + [folder / "current.pt2"]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = _Layers(width)
    example = (torch.zeros(2, width),)
    for k, path in enumerate(paths):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * p.abs().mean() * torch.randn_like(p))
            if path.stem == "current":
                net.layers[3].weight.mul_(2.0)
        program = torch.export.export(net, example,
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        tmp = path.with_name(f"{path.stem}.tmp.pt2")
        torch.export.save(program, tmp)
        tmp.rename(path)
        del program
    return paths


def _child(mode: str, paths: list[Path]) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, *map(str, paths)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _weight_diff(quick: bool) -> dict:
    params = 5_000_000 if quick else 100_000_000
    paths = _snapshots(params)
    for path in paths:  # warm the page cache alike for both sides
        path.read_bytes()
    floor = min((_child("floor", paths) for _ in range(2)), key=lambda r: r["seconds"])
    project = min((_child("project", paths) for _ in range(2)), key=lambda r: r["seconds"])
    snapshot_kib = paths[-1].stat().st_size / 1024
    return {
        "name": "weight_diff_vs_floor",
        "project_s": project["seconds"],
        "reference": "read 6 archives + one pass (floor)",
        "reference_s": floor["seconds"],
        "ratio": floor["seconds"] / project["seconds"],
        "params": {"parameters": params, "stable": 5, "snapshot_mib": round(snapshot_kib / 1024),
                   "peak_mib": round(project["peak_kib"] / 1024),
                   "peak_over_snapshot": round(project["peak_kib"] / snapshot_kib, 2),
                   "floor_peak_mib": round(floor["peak_kib"] / 1024),
                   "flagged_layers": project["flagged"]},
    }


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _activation_capture(quick: bool) -> dict:
    from hawkeye_dagster.analysis.activations import capture_activations
    from hawkeye_dagster.simulate.training import ServingNet

    torch.set_num_threads(1)
    n_features, rows = 64, 10_000
    torch.manual_seed(0)
    net = ServingNet(n_features, 3, (256, 128), binary=True).eval()
    batch = torch.export.Dim("batch", min=1)
    module = torch.export.export(net, (torch.zeros(4, n_features),),
                                 dynamic_shapes=({0: batch},)).module()
    x = torch.randn(rows, n_features)
    x[:, 3] = x[:, 3].abs()

    def forward():
        with torch.inference_mode():
            module(x)

    repeats = 5 if quick else 20
    forward()
    capture_activations(module, x)
    reference = _best(forward, repeats)
    project = _best(lambda: capture_activations(module, x), repeats)
    return {"name": "activation_capture_vs_forward", "project_s": project,
            "reference": "plain forward (torch)", "reference_s": reference,
            "ratio": reference / project,
            "params": {"rows": rows, "features": n_features, "hidden": "256x128",
                       "nodes": len(module.graph.nodes)}}


def _publication_to_report() -> dict:
    """The slow end-to-end test's measured latency (one implementation, in the test)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-m", "slow",
                          "-p", "no:cacheprovider", E2E_TEST],
                         cwd=REPO, capture_output=True, text=True)
    found = re.search(r"report materialized: ([\d.]+) s", out.stdout)
    if out.returncode or not found:
        raise RuntimeError(f"end-to-end test failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}")
    latency = float(found.group(1))
    return {"name": "snapshot_publication_to_report", "project_s": latency,
            "reference": "none (a target, not a comparison)", "reference_s": None,
            "ratio": None, "target_s": E2E_TARGET_S,
            "params": {"lake": "simulated clean, small", "runs": "dagster dev, in-process job"}}


def run(quick: bool) -> list[dict]:
    results = [_weight_diff(quick), _activation_capture(quick)]
    return results if quick else [*results, _publication_to_report()]


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
