"""The model shapes people serve, exported as snapshots are: what ablation is measured on.

Each is a ``torch.export`` program with a dynamic batch (``ep.module()``), weights
from a fixed seed, mapping ``[batch, F]`` float32 to ``[batch]`` values:

- ``simulator_snapshot``: the simulator's own :class:`ServingNet` (ads_ctr at the small
  scale: 19 features, standardization buffers, ``log`` of a count column sliced out,
  ``cat``, then a 20-24-12-1 MLP): a per-feature prefix into one linear layer;
- ``batchnorm_mlp``: BatchNorm1d in eval mode (a per-feature affine map) and a
  200-64-32-1 MLP: a per-feature prefix;
- ``wide_and_deep``: a wide linear part on ``log1p`` of the clipped first quarter of
  the columns, plus a deep MLP on the standardized columns, summed: a per-feature
  prefix into two linear layers;
- ``layernorm_mlp``: LayerNorm over the 200 features first: features mix at once.

Tests (``tests/test_ablation.py``) and the ablation benchmark both use them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hawkeye_dagster.simulate.training import ServingNet

#: where the prefix ends: per-feature ops into linear layers, or an op that mixes features
ELEMENTWISE_PREFIX, FEATURE_MIXING = "elementwise_prefix", "feature_mixing"


@dataclass(frozen=True)
class ServedModel:
    name: str
    kind: str
    n_features: int
    #: the program's module (``ep.module()``)
    module: torch.nn.Module
    #: the eager module it was exported from
    eager: torch.nn.Module

    def inputs(self, rows: int, seed: int = 1) -> torch.Tensor:
        """``[rows, F]`` float32 rows; non-negative, so a ``log`` of any column is finite."""
        return torch.randn(rows, self.n_features,
                           generator=torch.Generator().manual_seed(seed)).abs()


def _mlp(features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 1))


class _Normalized(nn.Module):
    """``norm`` then an MLP and a sigmoid: ``[batch, F] -> [batch]``."""

    def __init__(self, norm: nn.Module, features: int):
        super().__init__()
        self.norm, self.mlp = norm, _mlp(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(self.norm(x)).squeeze(-1))


class _WideAndDeep(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.wide_columns = features // 4
        self.wide = nn.Linear(self.wide_columns, 1)
        self.deep = _mlp(features)
        self.register_buffer("center", torch.rand(features))
        self.register_buffer("spread", torch.rand(features) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.wide(torch.log1p(x[:, :self.wide_columns].clamp(0, 20)))
        deep = self.deep((x - self.center) / self.spread)
        return torch.sigmoid((wide + deep).squeeze(-1))


def _simulator(features: int) -> nn.Module:
    net = ServingNet(features, log_position=3, hidden=(24, 12), binary=True)
    with torch.no_grad():
        net.center.copy_(torch.rand(features))
        net.spread.copy_(torch.rand(features) + 0.5)
    return net


def _batchnorm(features: int) -> nn.Module:
    norm = nn.BatchNorm1d(features)
    with torch.no_grad():
        norm.running_mean.copy_(torch.rand(features))
        norm.running_var.copy_(torch.rand(features) + 0.5)
        norm.weight.copy_(torch.rand(features) + 0.5)
        norm.bias.copy_(torch.randn(features) * 0.1)
    return _Normalized(norm, features)


#: name -> (kind, features, builder)
SHAPES: dict[str, tuple[str, int, Callable[[int], nn.Module]]] = {
    "simulator_snapshot": (ELEMENTWISE_PREFIX, 19, _simulator),
    "batchnorm_mlp": (ELEMENTWISE_PREFIX, 200, _batchnorm),
    "wide_and_deep": (ELEMENTWISE_PREFIX, 200, _WideAndDeep),
    "layernorm_mlp": (FEATURE_MIXING, 200, lambda f: _Normalized(nn.LayerNorm(f), f)),
}


def served_model(name: str, n_features: int | None = None, seed: int = 0) -> ServedModel:
    """The ``name`` shape (:data:`SHAPES`) with ``n_features`` inputs (its default if None),
    exported with a dynamic batch."""
    kind, default, build = SHAPES[name]
    features = default if n_features is None else n_features
    torch.manual_seed(seed)
    eager = build(features).eval()
    program = torch.export.export(eager, (torch.zeros(4, features),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    return ServedModel(name, kind, features, program.module(), eager)
