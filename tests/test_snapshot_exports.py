"""Every snapshot ``torch.export.save`` writes for a program the contract describes is accepted.

The batch dimension declared each way ``torch.export`` offers, traced with ``strict=True`` and
``strict=False``, output ``[batch]`` or ``[batch, 1]``, with eval-mode norms, persistent and
non-persistent buffers and a lifted tensor constant: each archive passes the loader, the
signature, the weight reader and the analyses that run a program.
"""

from __future__ import annotations

import functools
import io
import itertools

import numpy as np
import pytest
import torch
from torch.export import AdditionalInputs, Dim, ShapesCollection

from hawkeye_dagster.analysis.ablation import ablation_attributions
from hawkeye_dagster.analysis.activations import diagnose_activations
from hawkeye_dagster.gather.weights import weight_diff
from hawkeye_dagster.snapshot_io import (
    SnapshotSignature,
    SnapshotWeights,
    load_snapshot,
    snapshot_signature,
    state_dict_tensors,
)

torch.set_num_threads(1)

F = 3
FEATURES = ["clicks 7d", "ctr.smoothed", "price"]


class Buffered(torch.nn.Module):
    """Parameters, BatchNorm/LayerNorm in eval mode, both kinds of buffer and a lifted constant."""

    def __init__(self, column: bool):
        super().__init__()
        self.column = column
        self.hidden = torch.nn.Linear(F, 8)
        self.norm = torch.nn.BatchNorm1d(8)
        self.layer_norm = torch.nn.LayerNorm(8)
        self.out = torch.nn.Linear(8, 1)
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, 8))
        self.register_buffer("scale", torch.full((8,), 2.0), persistent=False)
        self.temperature = torch.tensor(1.5)  # neither parameter nor buffer: a lifted constant
        with torch.no_grad():
            self.norm.running_mean.normal_()
            self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = torch.relu(self.layer_norm(self.norm(self.hidden(x)) - self.shift)) * self.scale
        y = torch.sigmoid(self.out(h) / self.temperature)
        return y if self.column else y.squeeze(-1)


def _collection(example):
    shapes = ShapesCollection()
    shapes[example] = {0: Dim("batch")}
    return shapes


def _additional(example):
    inputs = AdditionalInputs()
    inputs.add((torch.randn(7, F),))
    return inputs


#: the ``dynamic_shapes`` of each way of declaring the batch, given the example input
DECLARATIONS = {
    "Dim": lambda example: ({0: Dim("batch")},),
    "Dim-bounded": lambda example: ({0: Dim("batch", min=1, max=4096)},),
    "Dim.AUTO": lambda example: ({0: Dim.AUTO},),
    "Dim.DYNAMIC": lambda example: ({0: Dim.DYNAMIC},),
    "ShapesCollection": _collection,
    "AdditionalInputs": _additional,
}
VARIANTS = list(itertools.product(DECLARATIONS, ["strict", "non-strict"], ["batch", "batch_1"]))


@functools.cache
def exported(declaration: str, tracing: str, output: str):
    """The eager model, its exported program and the ``.pt2`` bytes ``torch.export.save`` wrote."""
    torch.manual_seed(0)
    model = Buffered(column=output == "batch_1").eval()
    example = torch.randn(4, F)
    program = torch.export.export(model, (example,), strict=tracing == "strict",
                                  dynamic_shapes=DECLARATIONS[declaration](example))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return model, program, buffer.getvalue()


def _inputs(n: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, F, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=VARIANTS, ids="-".join)
def variant(request):
    return request.param


def test_snapshot_loads_with_the_contract_signature(variant):
    model, _, data = exported(*variant)
    program = load_snapshot(io.BytesIO(data), name="variant.pt2")
    assert snapshot_signature(program) == SnapshotSignature(n_features=F, output=variant[2])
    for rows in (1, 200):  # neither the example's batch nor the additional input's
        x = _inputs(rows)
        torch.testing.assert_close(program.module()(x), model(x))


def test_weights_read_back_as_exported(variant):
    _, program, data = exported(*variant)
    expected = dict(state_dict_tensors(program))
    assert "scale" in expected and "norm.running_var" in expected  # buffers of both kinds
    assert "temperature" in program.constants and "temperature" not in expected
    with SnapshotWeights(data, name="variant.pt2") as weights:
        assert set(weights.names) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(weights.tensor(name), value)
            assert weights.is_param(name) == (name in program.graph_signature.parameters)


def test_weight_diff_covers_every_tensor(variant, tmp_path):
    _, program, data = exported(*variant)
    path = tmp_path / "variant.pt2"
    path.write_bytes(data)
    diff = weight_diff(path, path)
    assert set(diff["parameter"]) == {name for name, _ in state_dict_tensors(program)}
    assert (diff["rel_l2"] == 0).all() and not diff["flagged"].any()


def test_activations_trace_an_overflow_to_its_feature(variant):
    module = load_snapshot(io.BytesIO(exported(*variant)[2])).module()
    x = _inputs()
    assert diagnose_activations(module, x.numpy(), FEATURES, model_id="m").healthy
    x[:10, 1] = 1e30  # overflows the layer norm's variance
    found = diagnose_activations(module, x.numpy(), FEATURES, model_id="m")
    assert found.bad_rows == found.bad_output_rows == 10
    assert found.responsible_features == [FEATURES[1]] and found.verified
    assert found.guards == [{"action": "add_guard", "model_id": "m", "node": FEATURES[1],
                             "guard": "clip"}]


def test_ablation_matches_the_eager_model(variant):
    model, _, data = exported(*variant)
    module = load_snapshot(io.BytesIO(data)).module()
    x, baselines = _inputs(), torch.zeros(F)
    expected = ablation_attributions(model, x, baselines)  # whole forward passes
    torch.testing.assert_close(ablation_attributions(module, x, baselines), expected)
    assert np.isfinite(expected.numpy()).all() and expected.abs().sum() > 0


@pytest.mark.parametrize("declaration", ["Dim", "Dim.DYNAMIC"])
def test_a_parameter_as_example_input_loads(declaration):
    # torch.save writes it with _rebuild_parameter, or _rebuild_parameter_with_state once
    # Dim.DYNAMIC marked it (a strict export makes a Parameter input static: not the contract)
    example = torch.nn.Parameter(torch.randn(4, F))
    program = torch.export.export(torch.nn.Linear(F, 1), (example,), strict=False,
                                  dynamic_shapes=DECLARATIONS[declaration](example))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    loaded = load_snapshot(io.BytesIO(buffer.getvalue()), name="parameter-input.pt2")
    assert snapshot_signature(loaded) == SnapshotSignature(n_features=F, output="batch_1")
