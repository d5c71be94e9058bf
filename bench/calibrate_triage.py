"""Fit the triage's confidence maps (``triage.calibration.FITTED``) on simulated seeds.

Every scenario is simulated over ``CALIBRATION_SEEDS`` (disjoint from the
accuracy benchmark's ``REPORT_SEEDS``) and triaged with identity maps, so
each confidence in a report is the branch's raw evidence. Each map is then
fitted by Platt scaling: a logistic regression of "was it right" on the raw
score (the logit of the raw evidence for root causes), with a weak ridge
prior towards the identity so a kind seen a few times stays near its raw
evidence. Labels: a root cause is right when its kind and id (and version)
are the truth's; the ``topline`` step when the incident is real; the
``model`` step when its model is the truth's suspect; ``snapshot_peer`` when
its snapshot is.

    python -m bench.calibrate_triage [--seeds 3] [--write]

``--write`` rewrites the ``FITTED`` block of ``calibration.py``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from scipy import optimize

from bench.bench_accuracy import correct, lake_of, window_of
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.simulate import SCENARIOS
from hawkeye_dagster.triage import calibration
from hawkeye_dagster.triage.tree import triage

CALIBRATION_SEEDS = range(100, 103)
#: ridge weight pulling (a, b) towards the identity map (0, 1)
PRIOR = 1.0
_STEP_SCORES = {"topline": "topline", "topline_to_models": "model",
                "model_to_snapshots": "snapshot_peer"}


def samples(seeds) -> dict[str, list[tuple[float, bool]]]:
    """(raw score, right) pairs per map, from triage with identity maps."""
    calibration.FITTED.update({k: (0.0, 1.0) for k in calibration.FITTED})
    found: dict[str, list[tuple[float, bool]]] = {k: [] for k in calibration.FITTED}
    for scenario in SCENARIOS:
        for seed in seeds:
            lake, truth = lake_of(scenario, seed)
            reader = open_lake(lake=str(lake))
            for incident in truth["incidents"]:
                result = triage(reader, incident["entry"], window_of(incident))
                _collect(found, result.report, incident)
            print(f"{scenario} seed {seed}: {sum(map(len, found.values()))} samples", flush=True)
    return found


def _collect(found, report: dict, incident: dict) -> None:
    expected = incident["root_cause"]
    for cause in report["root_causes"]:
        found[f"root_cause:{cause['kind']}"].append(
            (calibration.logit(cause["confidence"]), correct(cause, expected)))
    real = incident["verdict"] == "root_cause_found"
    truth_models = incident["suspects"]["models"]
    truth_snapshots = incident["suspects"]["snapshots"]
    for step in report["steps"]:
        name = _STEP_SCORES.get(step["step"])
        if name is None or step.get("confidence") is None:
            continue
        right = {"topline": real,
                 "model": real and report["suspects"]["models"][:1] == truth_models[:1],
                 "snapshot_peer": real and report["suspects"]["snapshots"][:1]
                 == truth_snapshots[:1]}[name]
        # the step's raw score is the logit of its identity-map confidence
        found[name].append((calibration.logit(step["confidence"]), right))


def fit(points: list[tuple[float, bool]]) -> tuple[float, float]:
    """Platt scaling with a ridge prior towards (0, 1)."""
    if not points:
        return 0.0, 1.0
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points], dtype=float)

    def loss(w):
        z = w[0] + w[1] * x
        return np.sum(np.logaddexp(0, z) - y * z) + PRIOR * (w[0] ** 2 + (w[1] - 1) ** 2)

    a, b = optimize.minimize(loss, np.array([0.0, 1.0]), method="BFGS").x
    return round(float(a), 3), round(float(b), 3)


def write(fitted: dict[str, tuple[float, float]]) -> None:
    path = Path(calibration.__file__)
    body = "\n".join(f'    "{k}": ({a}, {b}),' for k, (a, b) in fitted.items())
    text = re.sub(r"FITTED: dict\[str, tuple\[float, float\]\] = \{\n.*?\n\}",
                  "FITTED: dict[str, tuple[float, float]] = {\n" + body + "\n}",
                  path.read_text(), flags=re.S)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description="Fit the triage's confidence maps.")
    parser.add_argument("--seeds", type=int, default=len(CALIBRATION_SEEDS))
    parser.add_argument("--write", action="store_true", help="rewrite FITTED in calibration.py")
    args = parser.parse_args()
    seeds = CALIBRATION_SEEDS[: args.seeds]
    found = samples(seeds)
    fitted = {name: fit(points) for name, points in found.items()}
    for name, points in found.items():
        right = sum(r for _, r in points)
        print(f"{name}: {len(points)} samples, {right} right -> a, b = {fitted[name]}")
    print(json.dumps(fitted, indent=1))
    if args.write:
        write(fitted)


if __name__ == "__main__":
    main()
