"""Calibrated confidences: raw evidence scores mapped to the chance of being right.

Each map is a logistic curve ``p = 1 / (1 + exp(-(a + b * x)))`` of one raw
evidence score ``x``, fitted offline (Platt scaling) on simulated incidents
by ``bench/calibrate_triage.py`` over seeds that the accuracy benchmark does
not report on; the fitted constants are committed in :data:`FITTED`. A
confidence of 0.9 should then be right about 9 times in 10.

Raw scores: ``topline``: log of the CUSUM score; ``model``: log1p of
``degradation_z * max(correlation, 0)``; ``snapshot_peer``: log1p of the
peer z; root causes: the logit of the branch's own evidence probability
(``root_cause:<kind>``). An outside branch brings its own curves or none
(:func:`root_cause_confidence`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

#: (a, b) per raw score, fitted on seeds 100-102 of every scenario; regenerate with
#: ``python -m bench.calibrate_triage --write`` (it prints the sample counts)
FITTED: dict[str, tuple[float, float]] = {
    "topline": (0.054, 1.188),
    "model": (0.59, 1.532),
    "snapshot_peer": (0.222, 1.505),
    "root_cause:lineage_node": (-0.622, 1.784),
    "root_cause:lineage_change": (0.014, 1.068),
    "root_cause:snapshot": (0.109, 1.32),
    "root_cause:training_partition": (0.07, 1.37),
    "root_cause:feature": (0.0, 1.0),
    "root_cause:traffic": (0.555, 1.287),
}
_EPS = 1e-6
#: the curve of a root-cause kind no fit covers: the branch's evidence is its confidence
IDENTITY = (0.0, 1.0)


class FittedRootCauses(Mapping):
    """The fitted root-cause curves by kind, read from :data:`FITTED` when used (the fit in
    ``bench/calibrate_triage.py`` rewrites it): the built-in branches' calibration."""

    def __getitem__(self, kind: str) -> tuple[float, float]:
        return FITTED[f"root_cause:{kind}"]

    def __iter__(self) -> Iterator[str]:
        return (k.split(":", 1)[1] for k in list(FITTED) if k.startswith("root_cause:"))

    def __len__(self) -> int:
        return sum(1 for _ in self)


ROOT_CAUSES = FittedRootCauses()


def logistic(name: str, x: float) -> float:
    """The fitted map ``name`` at raw score ``x`` (NaN scores count as no evidence)."""
    return _logistic(FITTED[name], x)


def _logistic(curve: tuple[float, float], x: float) -> float:
    a, b = curve
    if not math.isfinite(x):
        x = 0.0
    return 1.0 / (1.0 + math.exp(-max(min(a + b * x, 50.0), -50.0)))


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def topline_confidence(score: float) -> float:
    """That a top-line anomaly with CUSUM ``score`` is a real incident."""
    return logistic("topline", math.log(max(score, _EPS)))


def model_confidence(degradation_z: float, correlation: float) -> float:
    """That the top suspect model is the one whose degradation moved the top line."""
    return logistic("model", math.log1p(max(degradation_z, 0.0) * max(correlation, 0.0)))


def snapshot_confidence(peer_z: float) -> float:
    """That a snapshot worse than its peers by ``peer_z`` is the one to blame."""
    return logistic("snapshot_peer", math.log1p(max(peer_z, 0.0)))


def root_cause_confidence(kind: str, evidence: float,
                          curves: Mapping[str, tuple[float, float]] = ROOT_CAUSES) -> float:
    """Calibrated confidence of a root cause of ``kind`` rated ``evidence`` (0..1) by its branch,
    through the branch's ``curves`` (an outside branch's own; :data:`IDENTITY` for a kind
    they lack, so an uncalibrated branch's evidence stands as its confidence)."""
    return _logistic(curves.get(kind, IDENTITY), logit(evidence))

