"""Snapshots exported with a bounded batch run on any number of rows.

A ``Dim("batch", min=8, max=64)`` program guards every call; the analyses and the simulator
run it through :mod:`hawkeye_dagster.analysis.program_batches`, in chunks it accepts, and get
what the eager model, or the same model exported with an unbounded batch, gives.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pandas as pd
import pytest
import torch
from torch.export import Dim

from hawkeye_dagster.analysis.ablation import ablation_attributions
from hawkeye_dagster.analysis.activations import capture_activations, diagnose_activations
from hawkeye_dagster.analysis.program_batches import (
    UNBOUNDED, BatchRange, RowChunk, batch_range, row_chunks, run_in_batches, run_program)
from hawkeye_dagster.simulate.training import predict
from hawkeye_dagster.snapshot_io import load_snapshot
from snapshot_fixtures import FEATURES as SERVING_FEATURES, LOG_POSITION, inputs, serving_net
from test_snapshot_exports import F, FEATURES, Buffered, _inputs

torch.set_num_threads(1)

#: each batch declaration: the ``Dim`` and the range the program accepts at run time
BOUNDS = {
    "1-64": (lambda: Dim("batch", min=1, max=64), BatchRange(0, 64)),  # torch allows 0/1 rows
    "8-64": (lambda: Dim("batch", min=8, max=64), BatchRange(8, 64)),
    "unbounded": (lambda: Dim("batch"), UNBOUNDED),
    "auto": (lambda: Dim.AUTO, UNBOUNDED),  # recorded as [2, oo]: 0/1 rows are allowed
}
BOUNDED = ["1-64", "8-64"]
ROWS = [1, 7, 64, 200, 1000]


def _buffered(column: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return Buffered(column=column).eval()


def _serving(nan: bool = False) -> torch.nn.Module:
    """The simulator's network; ``nan``: its NaN defect (small counts hit log(<0))."""
    net = serving_net()
    if nan:
        with torch.no_grad():
            net.log_shift.fill_(-3.5)
    return net


MODELS = {"buffered": _buffered, "buffered-column": functools.partial(_buffered, True),
          "serving": _serving, "serving-nan": functools.partial(_serving, True)}


@functools.cache
def snapshot(model: str, bounds: str) -> torch.export.ExportedProgram:
    """``MODELS[model]`` exported with ``BOUNDS[bounds]``, saved and loaded as a snapshot."""
    net = MODELS[model]()
    example = torch.zeros(16, next(net.parameters()).shape[1] if model.startswith("buffered")
                          else len(SERVING_FEATURES))
    program = torch.export.export(net, (example,), dynamic_shapes=({0: BOUNDS[bounds][0]()},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return load_snapshot(io.BytesIO(buffer.getvalue()), name=f"{model}-{bounds}.pt2")


@functools.cache
def module(model: str, bounds: str) -> torch.fx.GraphModule:
    return snapshot(model, bounds).module()


@pytest.mark.parametrize("bounds", list(BOUNDS))
def test_the_batch_range_is_read_from_the_program(bounds):
    expected = BOUNDS[bounds][1]
    assert batch_range(snapshot("buffered", bounds)) == expected
    assert batch_range(module("buffered", bounds)) == expected
    assert batch_range(_buffered()) == UNBOUNDED and batch_range(lambda x: x) == UNBOUNDED


def test_a_bounded_program_refuses_what_it_does_not_declare():
    x = _inputs(200)
    with pytest.raises(Exception, match="Guard failed"):
        module("buffered", "1-64")(x)
    with pytest.raises(Exception, match="Guard failed"):
        module("buffered", "8-64")(x[:7])


@pytest.mark.parametrize("bounds", BOUNDED)
@pytest.mark.parametrize("model", ["buffered", "buffered-column"])
@pytest.mark.parametrize("rows", ROWS)
def test_outputs_on_any_rows_equal_the_eager_model(bounds, model, rows):
    x = _inputs(rows, seed=rows)
    with torch.no_grad():
        expected = MODELS[model]()(x)
        out = run_program(module(model, bounds), x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    np.testing.assert_allclose(predict(module(model, bounds), x.numpy()),
                               expected.reshape(-1).double().numpy(), rtol=1e-6, atol=1e-7)


def test_no_rows_give_no_outputs():
    with torch.no_grad():
        assert run_program(module("buffered", "8-64"), _inputs(0)).shape == (0,)
        assert run_program(module("buffered-column", "1-64"), _inputs(0)).shape == (0, 1)


def test_chunks_are_few_and_only_the_last_is_padded():
    bounds = BatchRange(8, 64)
    assert row_chunks(1000, bounds)[-1] == RowChunk(960, 1000, 40)
    assert len(row_chunks(1000, bounds)) == 16
    assert row_chunks(130, bounds) == [RowChunk(0, 64, 64), RowChunk(64, 128, 64),
                                       RowChunk(128, 130, 8)]
    assert row_chunks(7, bounds) == [RowChunk(0, 7, 8)]
    assert row_chunks(5000, UNBOUNDED) == [RowChunk(0, 5000, 5000)]
    x = torch.arange(6.0).reshape(3, 2)
    torch.testing.assert_close(RowChunk(1, 3, 5).take(x),
                               torch.tensor([[2.0, 3], [4, 5], [4, 5], [4, 5], [4, 5]]))


@pytest.mark.parametrize("bounds", ["unbounded", "auto", "1-64"])
def test_an_accepted_batch_runs_on_the_input_itself(bounds):
    seen = []
    program = module("buffered", bounds)
    x = _inputs(64)
    out = run_in_batches(lambda t: seen.append(t) or program(t), x, batch_range(program))
    assert len(seen) == 1 and seen[0] is x  # no copy, no chunk
    assert run_in_batches(lambda t: seen.append(t) or program(t), x[:1],
                          batch_range(program)).shape == (1,)
    assert seen[-1].shape == (1, F)  # a declared min of 1 or 2 pads nothing, as torch allows
    torch.testing.assert_close(out, program(x))


def _activation_cases():
    x = _inputs(200)
    overflow = x.clone()
    overflow[:10, 1] = 1e30   # overflows the layer norm's variance
    overflow[-1, 1] = 1e30    # the last row, repeated when a chunk is padded
    serving = inputs(1000)
    nan_inputs = serving.copy()
    nan_inputs[::40, 4] = np.nan
    return {
        "buffered-healthy": ("buffered", x.numpy(), FEATURES),
        "buffered-overflow": ("buffered", overflow.numpy(), FEATURES),
        "buffered-overflow-7": ("buffered", overflow[-7:].numpy(), FEATURES),
        "serving-nan-log": ("serving-nan", serving, SERVING_FEATURES),
        "serving-nan-inputs": ("serving", nan_inputs, SERVING_FEATURES),
        "serving-nan-log-5": ("serving-nan", serving[:5], SERVING_FEATURES),
    }


ACTIVATION_CASES = _activation_cases()


def _computed(nodes: pd.DataFrame) -> pd.DataFrame:
    """Node summaries but slices: a bounded export drops the identity ``x[0:]`` an unbounded
    one keeps (torch proves it whole), which renames the slice after it."""
    return nodes[nodes["target"] != "aten.slice.Tensor"].reset_index(drop=True)


@pytest.mark.parametrize("bounds", BOUNDED)
@pytest.mark.parametrize("case", list(ACTIVATION_CASES))
def test_activations_equal_those_of_the_unbounded_export(bounds, case):
    model, x, names = ACTIVATION_CASES[case]
    found = diagnose_activations(module(model, bounds), x, names, model_id="m")
    expected = diagnose_activations(module(model, "unbounded"), x, names, model_id="m")
    pd.testing.assert_frame_equal(_computed(found.nodes), _computed(expected.nodes))
    pd.testing.assert_frame_equal(found.features, expected.features)
    for key in ("rows", "bad_rows", "bad_output_rows", "origins", "nonfinite_parameters", "path",
                "verified", "guards"):
        assert getattr(found, key) == getattr(expected, key), key
    assert found.summary() == expected.summary()
    if case == "serving-nan-log":
        assert found.bad_rows == (x[:, LOG_POSITION] < 3.5).sum() and found.verified


@pytest.mark.parametrize("bounds", BOUNDED)
def test_captured_rows_and_shapes_cover_every_input_row(bounds):
    x = torch.from_numpy(ACTIVATION_CASES["buffered-overflow"][1])
    nodes, row_bad = capture_activations(module("buffered", bounds), x, summarize=False)
    expected_nodes, expected_bad = capture_activations(module("buffered", "unbounded"), x,
                                                       summarize=False)
    assert torch.equal(row_bad, expected_bad) and int(row_bad.sum()) == 11
    pd.testing.assert_frame_equal(_computed(nodes), _computed(expected_nodes))
    assert (nodes.loc[nodes["batched"], "shape"].str[0] == 200).all()


@pytest.mark.parametrize("bounds", BOUNDED)
@pytest.mark.parametrize("model", ["buffered", "serving"])  # first-layer shortcut; whole passes
@pytest.mark.parametrize("rows", [7, 200])
@pytest.mark.parametrize("max_elements", [1 << 20, 5000])
def test_ablation_equals_that_of_the_unbounded_export(bounds, model, rows, max_elements):
    x = (_inputs(rows) if model == "buffered"
         else torch.from_numpy(inputs(rows)))
    baselines = torch.zeros(x.shape[1])
    found = ablation_attributions(module(model, bounds), x, baselines,
                                  max_batch_elements=max_elements)
    expected = ablation_attributions(module(model, "unbounded"), x, baselines,
                                     max_batch_elements=max_elements)
    eager = ablation_attributions(MODELS[model](), x, baselines)
    torch.testing.assert_close(found, expected)
    torch.testing.assert_close(found, eager)
    assert found.shape == x.shape and found.abs().sum() > 0
