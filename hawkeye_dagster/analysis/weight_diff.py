"""How far a snapshot's weights moved from the operationally stable ones, and whether that is unusual.

Model parameters of healthy snapshots move by a roughly stationary amount from
one snapshot to the next; a bad training run (loss or gradient explosion, bad
data) moves some layers much further, or fills them with NaN/inf. For every
state-dict tensor this module measures the change between the snapshot under
diagnosis and the latest stable snapshot (relative L2 change, max abs change,
mean/std shift, cosine similarity, non-finite counts, shape changes), learns the
normal size of that change from the stable-to-stable history, and turns it into
a z-score. Tensors are read and compared one name at a time, so memory stays
near two tensors rather than several snapshots. This module only compares the numbers of
open :class:`Weights` (:class:`~hawkeye_dagster.snapshot_io.SnapshotWeights` is one: archives
checked by :func:`~hawkeye_dagster.snapshot_io.check_archive`, nothing unpickled); opening
snapshot files for it is :mod:`hawkeye_dagster.gather.weights`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import torch

#: a change this many scales above a tensor's normal change is unusual
Z_THRESHOLD = 4.0
#: prior spread of a tensor's log relative change (a factor of e), worth
#: PRIOR_DIFFS stable diffs: with a short history the normal change is only
#: roughly known, and a handful of diffs can agree by chance far more closely
#: than retraining really does
PRIOR_LOG_SCALE = 1.0
PRIOR_DIFFS = 2.0
_TINY = 1e-12

HISTORY_COLUMNS = ("parameter", "n_diffs", "log_rel_mean", "log_rel_std")
DIFF_COLUMNS = (
    "parameter", "is_param", "shape", "reference_shape", "shape_changed", "numel",
    "rel_l2", "max_abs_change", "mean_shift", "std_shift", "cosine",
    "nan_count", "inf_count", "normal_rel_l2", "z", "flagged", "reason",
)


class Weights(Protocol):
    """What a comparison reads of a snapshot: its tensor names, each tensor, and which are
    parameters (the others are buffers)."""

    @property
    def names(self) -> Sequence[str]: ...

    def tensor(self, name: str) -> torch.Tensor: ...

    def is_param(self, name: str) -> bool: ...


def _float(t: torch.Tensor) -> torch.Tensor:
    """At least single precision, so that norms neither overflow nor round away small changes."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _moments(t: torch.Tensor) -> tuple[float, float, float]:
    """``(mean, std, L2 norm)`` in two fast passes (sum and norm; ``torch.std_mean`` is ~50x slower).

    ``std`` comes from ``E[x^2] - E[x]^2``, accurate while ``|mean| / std`` stays
    below ~1e3, as it does for weights and normalization buffers.
    """
    n = max(t.numel(), 1)
    mean = float(t.sum()) / n
    norm = float(torch.linalg.vector_norm(t))
    return mean, math.sqrt(max(norm * norm / n - mean * mean, 0.0)), norm


def _relative_change(new: torch.Tensor, old: torch.Tensor, old_norm: float) -> float:
    """``||new - old|| / ||old||``; ``old`` is overwritten with ``old - new``."""
    diff_norm = float(torch.linalg.vector_norm(old.sub_(new)))
    return diff_norm / old_norm if old_norm > 0 else (0.0 if diff_norm == 0 else math.inf)


def change_history(stable: Sequence[Weights]) -> pd.DataFrame:
    """The normal size of snapshot-to-snapshot change, learned from stable snapshots.

    Parameters
    ----------
    stable : the open weights of stable snapshots of one model, oldest first.

    Returns
    -------
    One row per tensor name: ``n_diffs`` consecutive stable pairs where it kept
    its shape, and the mean and standard deviation (``ddof=1``) of the natural
    log of their relative L2 change. Empty with fewer than two snapshots.
    """
    if len(stable) < 2:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    return _history(list(stable))


def _history(readers: list[Weights]) -> pd.DataFrame:
    names = list(dict.fromkeys(n for r in readers for n in r.names))
    log_rel = np.full((len(names), len(readers) - 1), np.nan)
    for i, name in enumerate(names):
        previous = previous_norm = None
        for k, reader in enumerate(readers):
            current = _float(reader.tensor(name)) if name in reader.names else None
            norm = float(torch.linalg.vector_norm(current)) if current is not None else None
            if previous is not None and current is not None and previous.shape == current.shape:
                change = _relative_change(current, previous, previous_norm)
                log_rel[i, k - 1] = math.log(change + _TINY)
            previous, previous_norm = current, norm
    n = np.isfinite(log_rel).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(log_rel, axis=1) / np.maximum(n, 1), np.nan)
        dev = np.where(np.isfinite(log_rel), log_rel - mean[:, None], 0.0)
        std = np.where(n > 1, np.sqrt((dev**2).sum(axis=1) / np.maximum(n - 1, 1)), np.nan)
    return pd.DataFrame({"parameter": names, "n_diffs": n, "log_rel_mean": mean,
                         "log_rel_std": std})


def _tensor_row(name: str, current: torch.Tensor | None, reference: torch.Tensor | None,
                is_param: bool) -> dict:
    """Change statistics of one tensor; ``reference`` is consumed (overwritten)."""
    row = {"parameter": name, "is_param": is_param,
           "shape": None if current is None else list(current.shape),
           "reference_shape": None if reference is None else list(reference.shape)}
    row["shape_changed"] = row["shape"] != row["reference_shape"]
    if current is None:
        return row | {"numel": 0, "nan_count": 0, "inf_count": 0}
    row["numel"] = current.numel()
    mean, std, norm = _moments(current)
    finite = math.isfinite(mean) and math.isfinite(norm)
    row["nan_count"] = 0 if finite else int(torch.isnan(current).sum())
    row["inf_count"] = 0 if finite else int(torch.isinf(current).sum())
    if reference is None or row["shape_changed"]:
        return row
    ref_mean, ref_std, ref_norm = _moments(reference)
    row["mean_shift"] = mean - ref_mean
    row["std_shift"] = std - ref_std
    dot = float(torch.dot(current.reshape(-1), reference.reshape(-1)))
    row["cosine"] = dot / (norm * ref_norm) if norm * ref_norm > 0 else math.nan
    row["rel_l2"] = _relative_change(current, reference, ref_norm)
    low, high = torch.aminmax(reference)  # now the difference
    row["max_abs_change"] = max(-float(low), float(high))
    return row


def compare_weights(snapshot: Weights, ref: Weights | None,
                    history: pd.DataFrame | None = None, *,
                    z_threshold: float = Z_THRESHOLD) -> pd.DataFrame:
    """Per-tensor change of a snapshot against the latest stable one, scored against history.

    Parameters
    ----------
    snapshot : the open weights of the snapshot under diagnosis.
    ref : those of the latest operationally stable snapshot of the same
        model, or ``None`` when there is none (only non-finite values are checked).
    history : :func:`change_history` of the stable snapshots; without it
        (or for tensors it lacks) ``z`` is NaN and size alone flags nothing.
    z_threshold : flag a tensor whose change is this many scales above normal.

    Returns
    -------
    One row per tensor name in either snapshot (``DIFF_COLUMNS``): ``rel_l2``
    is ``||w - w_ref|| / ||w_ref||``, ``max_abs_change`` is ``max |w - w_ref|``,
    ``mean_shift``/``std_shift`` are differences of the tensor's mean and
    standard deviation, ``cosine`` their cosine similarity, ``nan_count``/
    ``inf_count`` count non-finite values of ``current``; ``normal_rel_l2`` is
    the typical stable change (geometric mean) and ``z`` how many scales of log
    change above it this one is. The scale is the spread to expect of one more
    stable diff: the history's standard deviation of log change over its
    ``n`` diffs, shrunk toward :data:`PRIOR_LOG_SCALE`, widened for the
    uncertain mean: ``sqrt((k s0^2 + (n-1) s^2) / (k + n - 1) * (1 + 1/n))``
    with ``k`` = :data:`PRIOR_DIFFS`.
    ``flagged`` rows carry a ``reason``.
    """
    names = list(dict.fromkeys([*snapshot.names, *(ref.names if ref else [])]))
    rows = [
        _tensor_row(
            name,
            _float(snapshot.tensor(name)) if name in snapshot.names else None,
            _float(ref.tensor(name)) if ref is not None and name in ref.names else None,
            (snapshot if name in snapshot.names else ref).is_param(name),
        )
        for name in names
    ]
    frame = pd.DataFrame(rows).reindex(columns=list(DIFF_COLUMNS))
    return _score(frame, history, z_threshold, has_reference=ref is not None)


def _score(frame: pd.DataFrame, history: pd.DataFrame | None, z_threshold: float, *,
           has_reference: bool) -> pd.DataFrame:
    """Fill ``normal_rel_l2``, ``z``, ``flagged`` and ``reason`` (vectorized over tensors)."""
    hist = (history if history is not None else pd.DataFrame(columns=list(HISTORY_COLUMNS)))
    hist = hist.set_index("parameter").reindex(frame["parameter"])
    mean = hist["log_rel_mean"].to_numpy(dtype=float)
    spread = np.nan_to_num(hist["log_rel_std"].to_numpy(dtype=float) ** 2)
    n = hist["n_diffs"].to_numpy(dtype=float)
    dof = np.fmax(n - 1, 0)
    scale = np.sqrt((PRIOR_DIFFS * PRIOR_LOG_SCALE**2 + dof * spread) / (PRIOR_DIFFS + dof)
                    * (1 + 1 / np.fmax(n, 1)))
    rel = frame["rel_l2"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (np.log(rel + _TINY) - mean) / scale
    frame["normal_rel_l2"] = np.exp(mean)
    frame["z"] = z
    nonfinite = (frame["nan_count"].fillna(0) + frame["inf_count"].fillna(0)).to_numpy() > 0
    frame["shape_changed"] = frame["shape_changed"].astype(bool) & has_reference
    shape_changed = frame["shape_changed"].to_numpy()
    unusual = np.nan_to_num(z, nan=-np.inf) > z_threshold
    frame["flagged"] = nonfinite | shape_changed | unusual
    reason = np.full(len(frame), "", dtype=object)
    reason[unusual] = [
        f"changed {r:.3g} (relative L2), usually {n:.3g}: z={s:.1f}"
        for r, n, s in zip(rel[unusual], frame["normal_rel_l2"][unusual], z[unusual])
    ]
    reason[shape_changed] = [f"shape {r} -> {c}" for r, c in zip(
        frame["reference_shape"][shape_changed], frame["shape"][shape_changed])]
    reason[nonfinite] = [f"{int(n)} NaN and {int(i)} inf values" for n, i in zip(
        frame["nan_count"][nonfinite], frame["inf_count"][nonfinite])]
    frame["reason"] = reason
    return frame
