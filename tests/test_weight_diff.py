import json
import pickle
import zipfile

import numpy as np
import pytest
import torch

from hawkeye_dagster.gather.weights import weight_change_history, weight_diff
from hawkeye_dagster.snapshot_io import SnapshotWeights
from hawkeye_dagster.errors import BadSnapshotError
from snapshot_fixtures import save, serving_net, stable_chain, step

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    net, paths = stable_chain(tmp)
    return tmp, net, paths, weight_change_history(paths)


def test_reader_matches_the_program_state_dict(chain):
    tmp, net, paths, _ = chain
    with SnapshotWeights(paths[-1]) as weights:
        assert set(weights.names) == set(net.state_dict())
        for name, value in net.state_dict().items():
            torch.testing.assert_close(weights.tensor(name), value)
            assert weights.is_param(name) == (name in dict(net.named_parameters()))


def test_history_learns_the_size_of_normal_change(chain):
    _, net, _, history = chain
    assert set(history["parameter"]) == set(net.state_dict())
    moving = history[history["parameter"].isin(dict(net.named_parameters()))]
    assert (moving["n_diffs"] == 4).all()
    # the chain moves every parameter by ~1% of its mean magnitude per step
    assert np.exp(moving["log_rel_mean"]).between(0.001, 0.05).all()


def test_a_normal_next_snapshot_is_not_flagged(chain):
    tmp, net, paths, history = chain
    current = save(step(net, seed=999), tmp / "normal.pt2")
    diff = weight_diff(current, paths[-1], history)
    assert not diff["flagged"].any(), diff[diff["flagged"]]
    params = diff[diff["is_param"]]
    assert (params["cosine"] > 0.99).all()
    assert (params["z"].abs() < 4).all()
    assert (diff["nan_count"] == 0).all() and (diff["inf_count"] == 0).all()


def test_an_exploded_layer_is_the_one_flagged(chain):
    tmp, net, paths, history = chain
    bad = step(net, seed=999)
    with torch.no_grad():
        bad.mlp[2].weight.mul_(3.0)
    diff = weight_diff(save(bad, tmp / "exploded.pt2"), paths[-1], history)
    assert diff.loc[diff["flagged"], "parameter"].tolist() == ["mlp.2.weight"]
    row = diff.set_index("parameter").loc["mlp.2.weight"]
    assert row["rel_l2"] == pytest.approx(2.0, rel=0.05)
    assert row["std_shift"] > 0 and row["z"] > 6
    assert "usually" in row["reason"]
    with SnapshotWeights(paths[-1]) as stable:
        change = bad.mlp[2].weight.detach() - stable.tensor("mlp.2.weight")
    assert row["max_abs_change"] == pytest.approx(float(change.abs().max()), rel=1e-5)


def test_non_finite_weights_and_shape_changes_are_flagged(chain):
    tmp, net, paths, history = chain
    bad = step(net, seed=999)
    with torch.no_grad():
        bad.mlp[0].bias[:3] = float("nan")
        bad.mlp[4].weight[0, 0] = float("inf")
    diff = weight_diff(save(bad, tmp / "nan.pt2"), paths[-1], history).set_index("parameter")
    assert diff.loc["mlp.0.bias", ["nan_count", "inf_count"]].tolist() == [3, 0]
    assert diff.loc["mlp.4.weight", ["nan_count", "inf_count"]].tolist() == [0, 1]
    assert set(diff.index[diff["flagged"]]) == {"mlp.0.bias", "mlp.4.weight"}

    wider = serving_net(hidden=(20, 8))
    diff = weight_diff(save(wider, tmp / "wider.pt2"), paths[-1], history).set_index("parameter")
    assert diff.loc["mlp.0.weight", "shape_changed"]
    assert diff.loc["mlp.0.weight", "reason"].startswith("shape")
    assert not diff.loc["center", "flagged"]


def test_without_stable_snapshots_only_numerics_are_judged(chain):
    tmp, net, paths, _ = chain
    diff = weight_diff(paths[-1], None)
    assert not diff["flagged"].any() and not diff["shape_changed"].any()
    assert diff["z"].isna().all()
    diff = weight_diff(paths[-1], paths[-2])  # a reference but no history: no z
    assert diff["z"].isna().all() and not diff["flagged"].any()
    assert weight_change_history(paths[:1]).empty


class _Planted:
    """Unpickling this would create a file: the test checks that nothing is unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _with_pickled_weight(source, target, marker):
    """A copy of a real archive whose first weight record is a pickle, as torch writes subclasses."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
            elif info.filename.endswith("data/weights/weight_0"):
                data = pickle.dumps(_Planted(str(marker)))
            dst.writestr(info, data)


def test_bad_artifacts_are_refused_and_never_unpickled(chain, tmp_path):
    _, _, paths, _ = chain
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(paths[-1].read_bytes()[:2000])
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a model at all" * 100)
    marker = tmp_path / "unpickled"
    plain_pickle = tmp_path / "model.pt2"
    plain_pickle.write_bytes(pickle.dumps(_Planted(str(marker))))
    pickled_weight = tmp_path / "pickled-weight.pt2"
    _with_pickled_weight(paths[-1], pickled_weight, marker)
    for path in [truncated, garbage, plain_pickle, pickled_weight, tmp_path / "missing.pt2"]:
        with pytest.raises(BadSnapshotError) as caught:
            weight_diff(path, paths[-1])
        assert caught.value.file == str(path) and caught.value.table == "snapshots"
    assert not marker.exists()
