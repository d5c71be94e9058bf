"""Tiny exported snapshots for the snapshot-diagnosis tests: the simulator's serving network,
perturbed the way successive training runs move it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from hawkeye_dagster.simulate.training import ServingNet

N_FEATURES = 6
LOG_POSITION = 2
FEATURES = ["clicks 7d", "ctr.smoothed", "views 'raw'", "age-days", "score é", "price"]


def serving_net(seed: int = 0, hidden: tuple[int, int] = (16, 8)) -> ServingNet:
    torch.manual_seed(seed)
    return ServingNet(N_FEATURES, LOG_POSITION, hidden, binary=True).eval()


def step(net: ServingNet, seed: int, relative: float = 0.01) -> ServingNet:
    """A copy whose parameters moved by about ``relative`` of their size, as a retrain would."""
    moved = copy.deepcopy(net)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(relative * p.abs().mean() * torch.randn(p.shape, generator=generator))
    return moved


def export(net: ServingNet) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(net, (torch.zeros(4, N_FEATURES),), dynamic_shapes=({0: batch},))


def save(net: ServingNet, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(export(net), path)
    return path


def stable_chain(tmp: Path, n: int = 5, seed: int = 0) -> tuple[ServingNet, list[Path]]:
    """``n`` stable snapshots of one model, oldest first, and the latest network."""
    net = serving_net(seed)
    paths = []
    for k in range(n):
        net = step(net, seed=100 + k)
        paths.append(save(net, tmp / f"stable-{k}.pt2"))
    return net, paths


def inputs(n: int = 2000, seed: int = 0) -> np.ndarray:
    """``[n, F]`` float32 serving features; the log feature is a non-negative count."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    x[:, LOG_POSITION] = rng.poisson(5.0, n)
    return x
