import networkx as nx
import numpy as np
import pytest
import torch

from hawkeye_dagster.analysis.activations import capture_activations, diagnose_activations, model_graph
from snapshot_fixtures import FEATURES, LOG_POSITION, export, inputs, serving_net

torch.set_num_threads(1)


def _module(net):
    return export(net).module()


@pytest.fixture(scope="module")
def healthy():
    return _module(serving_net())


@pytest.fixture(scope="module")
def nan_module():
    """The simulator's NaN defect: a log offset fitted so that small counts hit log(<0)."""
    net = serving_net()
    with torch.no_grad():
        net.log_shift.fill_(-3.5)
    return _module(net)


def test_a_healthy_model_says_so(healthy):
    found = diagnose_activations(healthy, inputs(), FEATURES, model_id="m")
    assert found.healthy and found.bad_rows == 0 and found.bad_output_rows == 0
    assert found.origins == [] and found.guards == [] and found.features.empty
    assert found.summary().startswith("no NaN, inf or extreme activations")


def test_capture_summarises_every_node(healthy):
    x = torch.from_numpy(inputs())
    nodes, row_bad = capture_activations(healthy, x)
    assert not row_bad.any() and not nodes["bad"].any()
    graph = model_graph(healthy)
    computed = [n for n, op in graph.nodes(data="op") if op in ("call_function", "placeholder")]
    assert set(computed) - set(nodes["node"]) <= {"_guards_fn"}
    with torch.no_grad():
        output = healthy(x)
    last = nodes.set_index("node").loc[next(graph.predecessors("output"))]
    assert last["min"] == pytest.approx(float(output.min()))
    assert last["max"] == pytest.approx(float(output.max()))


def test_nan_from_an_input_feature_is_walked_to_that_feature(nan_module):
    x = inputs()
    found = diagnose_activations(nan_module, x, FEATURES, model_id="m")
    small = x[:, LOG_POSITION] < 3.5
    assert found.bad_rows == small.sum() == found.bad_output_rows
    assert found.origins == ["log"]
    assert found.path[0] == "log" and found.path[-1] in {"sigmoid", "view", "squeeze"}
    assert found.responsible_features == [FEATURES[LOG_POSITION]] and found.verified
    assert found.guards == [{"action": "add_guard", "model_id": "m",
                             "node": FEATURES[LOG_POSITION], "guard": "clip"}]
    # re-running with the suggested guard in place removes every bad value
    clean = found.nodes  # keep the first diagnosis for its summary
    lower = np.quantile(x[~small, LOG_POSITION], 0.001)
    guarded = x.copy()
    guarded[:, LOG_POSITION] = np.maximum(guarded[:, LOG_POSITION], lower)
    assert diagnose_activations(nan_module, guarded, FEATURES, model_id="m").healthy
    assert clean.set_index("node").loc["log", "nan_rows"] == small.sum()


def test_nan_inputs_are_traced_to_their_column(healthy):
    x = inputs()
    x[::40, 4] = np.nan
    found = diagnose_activations(healthy, x, FEATURES, model_id="m")
    assert found.origins == ["x"] and found.bad_rows == len(x[::40])
    assert found.responsible_features == [FEATURES[4]] and found.verified


def test_two_causes_need_both_features(nan_module):
    x = inputs()
    x[::25, 0] = np.nan
    found = diagnose_activations(nan_module, x, FEATURES, model_id="m")
    assert set(found.responsible_features) == {FEATURES[0], FEATURES[LOG_POSITION]}
    assert found.verified and len(found.guards) == 2


def test_overflow_no_input_explains_gets_a_layernorm(tmp_path):
    net = serving_net()
    with torch.no_grad():
        net.mlp[2].weight.mul_(1e8)
    module = _module(net)
    found = diagnose_activations(module, inputs(), FEATURES, model_id="m")
    assert not found.healthy and found.bad_rows == 2000
    assert not found.verified and found.responsible_features == []
    [guard] = found.guards
    assert guard["guard"] == "layernorm"
    graph = model_graph(module)
    assert guard["node"] in graph and graph.nodes[guard["node"]]["op"] == "call_function"
    assert nx.has_path(graph, guard["node"], found.origins[0])


def test_non_finite_weights_are_the_snapshots_fault():
    net = serving_net()
    with torch.no_grad():
        net.mlp[0].weight[0, 0] = float("nan")
    found = diagnose_activations(_module(net), inputs(), FEATURES, model_id="m")
    assert not found.healthy
    assert found.nonfinite_parameters == ["mlp_0_weight"]
    assert found.guards == [] and "non-finite parameters" in found.summary()


def test_inputs_must_match_the_features(healthy):
    with pytest.raises(ValueError, match="feature names"):
        diagnose_activations(healthy, inputs()[:, :3], FEATURES, model_id="m")
