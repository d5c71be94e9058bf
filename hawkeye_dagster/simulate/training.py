"""Serving models: a small MLP, its real training loop, and its ``.pt2`` export.

Every snapshot of a model has the same module structure, so parameter names
are stable across snapshots. The network standardizes its inputs with
buffers fitted on its training data and log-transforms one count feature,
``log(x[:, k] + log_shift)``: a real numeric path that a bad ``log_shift``
turns into NaN for the rows below the shift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hawkeye_dagster.analysis.program_batches import run_program

#: training defects the simulator can inject
EXPLODING_LR = "exploding_lr"
NAN_LOG_SHIFT = "nan_log_shift"
UNDERFIT = "underfit"


class ServingNet(nn.Module):
    """``[batch, F]`` float32 features -> ``[batch]`` probability (binary) or value (regression)."""

    def __init__(self, n_features: int, log_position: int, hidden: tuple[int, int], binary: bool):
        super().__init__()
        self.log_position = log_position
        self.binary = binary
        self.register_buffer("center", torch.zeros(n_features))
        self.register_buffer("spread", torch.ones(n_features))
        self.register_buffer("log_shift", torch.ones(1))
        self.register_buffer("target_center", torch.zeros(1))
        self.register_buffer("target_spread", torch.ones(1))
        self.mlp = nn.Sequential(
            nn.Linear(n_features + 1, hidden[0]), nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
            nn.Linear(hidden[1], 1),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        k = self.log_position
        counts = torch.log(x[:, k:k + 1] + self.log_shift)
        out = self.mlp(torch.cat([(x - self.center) / self.spread, counts], dim=1)).squeeze(-1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        if self.binary:
            return torch.sigmoid(out)
        return out * self.target_spread + self.target_center


@dataclass
class TrainingResult:
    net: ServingNet
    #: per step, ``[steps]`` each (loss as the optimizer saw it; non-finite where it blew up)
    loss: np.ndarray
    grad_norm: np.ndarray


def train(x: np.ndarray, y: np.ndarray, *, log_position: int, hidden: tuple[int, int],
          binary: bool, steps: int, seed: int, defect: str | None = None) -> TrainingResult:
    """Train a :class:`ServingNet` with Adam on ``x`` ``[n, F]`` float32 and labels ``y`` ``[n]``.

    ``defect`` injects a training bug: ``exploding_lr`` (the learning-rate
    schedule grows geometrically, so loss and gradients blow up; the trainer
    keeps the last finite weights), ``nan_log_shift`` (the exported log offset
    is fitted wrongly, so small counts hit ``log`` of a negative number),
    ``underfit`` (a truncated run on a fraction of the steps).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = ServingNet(x.shape[1], log_position, hidden, binary)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
    with torch.no_grad():
        net.center.copy_(xt.mean(0))
        net.spread.copy_(xt.std(0).clamp_min(1e-3))
        if not binary:
            net.target_center.fill_(float(yt.mean()))
            net.target_spread.fill_(float(yt.std().clamp_min(1e-3)))
    target = yt if binary else (yt - net.target_center) / net.target_spread
    criterion = nn.BCEWithLogitsLoss() if binary else nn.MSELoss()
    base_lr = 3e-3
    optimizer = torch.optim.Adam(net.parameters(), lr=base_lr, weight_decay=1e-5)
    n_steps = max(steps // 10, 5) if defect == UNDERFIT else steps
    losses, norms = [], []
    last_good = {k: v.clone() for k, v in net.state_dict().items()}
    for step in range(n_steps):
        if defect == EXPLODING_LR:
            for group in optimizer.param_groups:
                group["lr"] = base_lr * 1.06 ** step
        batch = torch.randint(0, len(xt), (256,), generator=generator)
        loss = criterion(net.logits(xt[batch]), target[batch])
        optimizer.zero_grad()
        loss.backward()
        norm = nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
        losses.append(loss.item())
        norms.append(float(norm))
        if not (np.isfinite(losses[-1]) and np.isfinite(norms[-1])):
            net.load_state_dict(last_good)  # the trainer keeps the last weights with a finite loss
            break
        last_good = {k: v.clone() for k, v in net.state_dict().items()}
        optimizer.step()
    if defect == NAN_LOG_SHIFT:
        with torch.no_grad():
            net.log_shift.fill_(-float(torch.quantile(xt[:, log_position], 0.12)))
    return TrainingResult(net.eval(), np.array(losses), np.array(norms))


class Exporter:
    """Exports snapshots as ``.pt2`` with a dynamic batch dimension.

    All snapshots of a model share one graph (same module structure and
    constants), so the graph is traced once per model and each later
    snapshot is that program with its own weights: the same file that
    tracing it afresh would give, at a fraction of the cost.
    """

    def __init__(self, batch_dim: Callable[[], object] = lambda: torch.export.Dim("batch", min=1)):
        #: the batch dimension's declaration for a newly traced model (``Dim``, ``Dim.AUTO``, ...)
        self._batch_dim = batch_dim
        self._traced: dict[str, torch.export.ExportedProgram] = {}

    def export(self, model_id: str, net: ServingNet, path: Path) -> torch.export.ExportedProgram:
        """Save ``net`` at ``path``; returns the saved program."""
        traced = self._traced.get(model_id)
        if traced is None:
            example = torch.zeros(4, net.center.shape[0])
            program = traced = torch.export.export(net, (example,),
                                                   dynamic_shapes=({0: self._batch_dim()},))
            self._traced[model_id] = traced
        else:
            weights = net.state_dict()
            state = {name: (nn.Parameter(weights[name].detach().clone(), requires_grad=False)
                            if isinstance(value, nn.Parameter) else weights[name].detach().clone())
                     for name, value in traced.state_dict.items()}
            program = torch.export.ExportedProgram(
                root=traced.graph_module, graph=traced.graph,
                graph_signature=traced.graph_signature, state_dict=state,
                range_constraints=traced.range_constraints,
                module_call_graph=traced.module_call_graph, example_inputs=traced.example_inputs,
                constants=traced.constants, verifiers=traced.verifiers)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, path)
        return program


def predict(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Run an exported snapshot's module on ``x`` ``[n, F]`` float32; returns ``[n]`` float64 (NaN kept)."""
    if len(x) == 0:
        return np.zeros(0)
    with torch.no_grad():  # in the batches a bounded program accepts
        out = run_program(module, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return out.reshape(-1).double().numpy()


def log_node_name(program: torch.export.ExportedProgram) -> str:
    """The name of the ``log`` node in the exported graph (where a bad shift makes NaN)."""
    return next(n.name for n in program.graph.nodes
                if n.op == "call_function" and n.target == torch.ops.aten.log.default)
