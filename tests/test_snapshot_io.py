"""Snapshots load through torch.export.load only; hostile archives are refused without running."""

from __future__ import annotations

import _compat_pickle
import io
import json
import os
import pickle
import re
import struct
import zipfile

import pytest
import torch
from torch._weights_only_unpickler import _get_allowed_globals
from torch.serialization import StorageType

from hawkeye_dagster.errors import BadSnapshotError
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.snapshot_io import (
    TENSOR_GLOBALS,
    SnapshotSignature,
    SnapshotWeights,
    artifact_weights,
    check_archive,
    load_artifact,
    load_snapshot,
    snapshot_signature,
    state_dict_tensors,
)
from lake_factory import snapshot_bytes, write_lake

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def good() -> bytes:
    return snapshot_bytes(3, "binary_classification")


class Touch:
    """Unpickling this creates ``path``: the proof that a pickle was (not) run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def rewrite(data: bytes, *, program=None, replace: dict | None = None,
            add: dict | None = None) -> bytes:
    """A copy of a .pt2 archive with its program JSON edited, entries replaced or added."""
    source = zipfile.ZipFile(io.BytesIO(data))
    root = source.namelist()[0].split("/")[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            body = source.read(info)
            suffix = info.filename[len(root) + 1:]
            if program and suffix == "models/model.json":
                body = json.dumps(program(json.loads(body))).encode()
            body = (replace or {}).get(suffix, body)
            target.writestr(info, body)
        for name, body in (add or {}).items():
            target.writestr(name.format(root=root), body)
    return out.getvalue()


def renamed(doc, old: str, new: str):
    """The program JSON with every string (and key) ``old`` renamed to ``new``."""
    text = json.dumps(doc)
    return json.loads(text.replace(json.dumps(old), json.dumps(new)))


def test_good_program_loads_and_runs(tmp_path, good):
    path = tmp_path / "m.pt2"
    path.write_bytes(good)
    program = load_snapshot(path, snapshot_id="s1")
    x = torch.randn(5, 3)
    out = program.module()(x)
    assert out.shape == (5,)
    assert torch.all((out > 0) & (out < 1))
    assert snapshot_signature(program) == SnapshotSignature(n_features=3, output="batch")
    names = dict(state_dict_tensors(program))
    assert set(names) == {"layer.weight", "layer.bias"}
    weight = names["layer.weight"]
    assert weight.data_ptr() == program.state_dict["layer.weight"].data_ptr()  # not a copy
    expected = torch.sigmoid(x @ weight.T + names["layer.bias"]).squeeze(-1)
    torch.testing.assert_close(out, expected)


def test_signature_of_a_column_output(tmp_path):
    class Column(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.register_buffer("scale", torch.ones(4), persistent=False)

        def forward(self, x):
            return self.layer(x * self.scale)

    program = torch.export.export(Column(), (torch.zeros(2, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    loaded = load_snapshot(io.BytesIO(buffer.getvalue()), name="column.pt2")
    assert snapshot_signature(loaded).output == "batch_1"
    assert {n for n, _ in state_dict_tensors(loaded)} == {"layer.weight", "layer.bias", "scale"}


def test_static_batch_is_not_the_contract(good):
    program = torch.export.export(torch.nn.Linear(3, 1), (torch.zeros(2, 3),))
    with pytest.raises(BadSnapshotError, match="dynamic batch"):
        snapshot_signature(program, name="static.pt2")


def test_plain_pickle_is_refused_unread(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "x.pt2"
    path.write_bytes(pickle.dumps(Touch(marker)))
    with pytest.raises(BadSnapshotError, match="pickle") as info:
        load_snapshot(path, snapshot_id="evil")
    assert not marker.exists()
    assert info.value.file == str(path) and info.value.snapshot_id == "evil"
    assert str(path) in str(info.value)


def test_torch_save_archive_renamed_pt2_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt2"
    torch.save({"w": torch.ones(2), "evil": Touch(marker)}, path)
    with pytest.raises(BadSnapshotError, match="pickle entry"):
        load_snapshot(path)
    assert not marker.exists()


def test_truncated_and_missing_files_are_refused(tmp_path, good):
    path = tmp_path / "cut.pt2"
    path.write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(BadSnapshotError, match="truncated"):
        load_snapshot(path)
    with pytest.raises(BadSnapshotError, match="cannot read"):
        load_snapshot(tmp_path / "absent.pt2")


def test_corrupt_entry_fails_its_crc(good):
    body = bytearray(good)
    at = body.index(b'"config"')  # inside the stored weights config
    body[at + 1] ^= 0xFF
    with pytest.raises(BadSnapshotError, match="CRC"):
        check_archive(bytes(body), name="flipped.pt2")


@pytest.mark.parametrize("entry", ["../evil", "/abs/evil", "{root}/../../evil"])
def test_entries_leaving_the_archive_are_refused(good, entry):
    with pytest.raises(BadSnapshotError, match="unsafe entry"):
        check_archive(rewrite(good, add={entry: b"x"}), name="slip.pt2")


def test_zip_bomb_is_refused_by_size(good):
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/extra/padding", b"\0" * 5_000_000)
    with pytest.raises(BadSnapshotError, match="size above"):
        check_archive(bomb.getvalue(), name="bomb.pt2", max_bytes=1_000_000)


def test_non_export_zip_is_refused():
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("docs/readme.txt", "hello")
    with pytest.raises(BadSnapshotError, match="not part of a plain torch.export"):
        check_archive(other.getvalue(), name="docs.zip")


@pytest.mark.parametrize("entry", ["{root}/data/aotinductor/model/model.so",
                                   "{root}/data/weights/model.pt",
                                   "{root}/models/other.json",
                                   "{root}/data/constants/custom_obj_0"])
def test_entries_that_torch_would_run_or_unpickle_are_refused(good, entry):
    with pytest.raises(BadSnapshotError, match="not part of a plain"):
        check_archive(rewrite(good, add={entry: b"\x7fELF"}), name="extra.pt2")


def test_pickled_weights_are_refused(good):
    source = zipfile.ZipFile(io.BytesIO(good))
    name = next(n for n in source.namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(source.read(name))
    next(iter(config["config"].values()))["use_pickle"] = True
    changed = rewrite(good, replace={"data/weights/model_weights_config.json":
                                     json.dumps(config).encode()})
    with pytest.raises(BadSnapshotError, match="stored as a pickle"):
        check_archive(changed, name="pickled.pt2")


def test_sample_inputs_pickle_naming_other_globals_is_refused(tmp_path, good):
    # torch.export.load tries weights_only=True on the sample inputs, then falls back to
    # weights_only=False, which would run this pickle.
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(((torch.zeros(2, 3),), {"evil": Touch(marker)}), buffer)
    changed = rewrite(good, replace={"data/sample_inputs/model.pt": buffer.getvalue()})
    with pytest.raises(BadSnapshotError, match="sample inputs pickle names"):
        load_snapshot(io.BytesIO(changed), name="inputs.pt2")
    assert not marker.exists()


class Rebuilt:
    """Pickles as ``_rebuild_from_type_v2(*args)``, the form of a tensor with attributes."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (torch._tensor._rebuild_from_type_v2, self.args)


class Touching(torch.Tensor):
    """A tensor type whose ``__setstate__`` creates the file its state names."""

    def __setstate__(self, state):
        open(state, "w").close()


@pytest.mark.parametrize("other", ["function", "type"])
def test_rebuild_from_type_with_other_globals_is_refused(tmp_path, good, other):
    # _rebuild_from_type_v2 is allowed (Dim.DYNAMIC example inputs need it); what it calls and
    # the type it makes are globals of the pickle too, checked like any other
    marker = tmp_path / "pwned"
    rebuild, args = torch.zeros(2, 3).__reduce_ex__(2)
    payload = {"function": Rebuilt(open, torch.Tensor, (str(marker), "w"), {}),
               "type": Rebuilt(rebuild, Touching, args, str(marker))}[other]
    buffer = io.BytesIO()
    torch.save(((payload,), {}), buffer)
    changed = rewrite(good, replace={"data/sample_inputs/model.pt": buffer.getvalue()})
    with pytest.raises(BadSnapshotError, match="sample inputs pickle names") as info:
        load_snapshot(io.BytesIO(changed), name="rebuild.pt2")
    assert {"function": "open'", "type": "Touching'"}[other] in str(info.value)
    assert "rebuild.pt2" in str(info.value)
    assert not marker.exists()


def test_tensor_globals_are_torchs_weights_only_ones_for_tensors():
    allowed = _get_allowed_globals()
    assert TENSOR_GLOBALS <= set(allowed)
    storages = {n for n in TENSOR_GLOBALS if isinstance(allowed[n], StorageType)}
    assert "torch.FloatStorage" in storages
    assert TENSOR_GLOBALS - storages == {
        "torch._utils._rebuild_tensor_v2", "torch._tensor._rebuild_from_type_v2",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
        "torch.Tensor", "torch.nn.parameter.Parameter", "torch.Size", "collections.OrderedDict"}
    # the name checked is the object imported: no unpickler renames it (protocol-2 mappings)
    for name in TENSOR_GLOBALS:
        module, attr = name.rsplit(".", 1)
        for mappings in (_compat_pickle, torch._utils):
            assert module not in mappings.IMPORT_MAPPING
            assert (module, attr) not in mappings.NAME_MAPPING


def test_graph_names_that_would_be_compiled_as_code_are_refused(tmp_path, good):
    # FX pastes placeholder names into the source it compiles while loading:
    # ``def forward(self, ..., x=<payload>)`` would run the payload.
    marker = tmp_path / "pwned"
    payload = f"x=__import__('pathlib').Path({str(marker)!r}).touch()"
    changed = rewrite(good, program=lambda doc: renamed(doc, "x", payload))
    with pytest.raises(BadSnapshotError, match="not identifiers|not an identifier"):
        load_snapshot(io.BytesIO(changed), name="names.pt2")
    assert not marker.exists()


def test_symbolic_expressions_that_would_be_evaluated_are_refused(tmp_path, good):
    # the deserializer hands these strings to sympy.sympify, i.e. eval
    marker = tmp_path / "pwned"
    archive = zipfile.ZipFile(io.BytesIO(good))
    program = archive.read(next(n for n in archive.namelist() if n.endswith("models/model.json")))
    symbol = re.search(r'"expr_str": "([^"]+)"', program.decode()).group(1)
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    changed = rewrite(good, program=lambda d: renamed(d, symbol, payload))
    with pytest.raises(BadSnapshotError, match="symbolic expression"):
        load_snapshot(io.BytesIO(changed), name="sympy.pt2")
    assert not marker.exists()


def test_guards_that_would_be_executed_are_refused(tmp_path, good):
    marker = tmp_path / "pwned"
    guard = f"__import__('os').system('touch {marker}') == 0"
    changed = rewrite(good, program=lambda d: {**d, "guards_code": [guard]})
    with pytest.raises(BadSnapshotError, match="guard"):
        load_snapshot(io.BytesIO(changed), name="guard.pt2")
    size_check = rewrite(good, program=lambda d: {**d, "guards_code": ["L['x'].size()[1] == 3"]})
    check_archive(size_check, name="size-guard.pt2")  # a plain size check is fine
    assert not marker.exists()


@pytest.mark.parametrize("target", ["torch.os.system", "builtins.exec",
                                    "torch.ops.aten.__class__"])
def test_node_targets_that_are_not_operators_are_refused(good, target):
    changed = rewrite(good, program=lambda d: renamed(d, "torch.ops.aten.linear.default", target))
    with pytest.raises(BadSnapshotError, match="not an operator"):
        check_archive(changed, name="target.pt2")


def test_load_artifact_names_the_lake_file(tmp_path):
    root = write_lake(tmp_path / "lake")
    lake = ParquetLake(str(root))
    program = load_artifact(lake, "artifacts/ads@1.pt2", snapshot_id="ads@1")
    assert snapshot_signature(program).n_features == 2
    os.remove(root / "artifacts" / "ranker@1.pt2")
    with pytest.raises(BadSnapshotError, match="missing") as info:
        load_artifact(lake, "artifacts/ranker@1.pt2", snapshot_id="ranker@1")
    assert info.value.file == f"{root}/artifacts/ranker@1.pt2"



# --- weights streamed tensor by tensor: the same checks ---------------------------------------

def _zip_bomb() -> bytes:
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/extra/padding", b"\0" * 5_000_000)
    return bomb.getvalue()


def _pickled_weight(good: bytes, marker) -> bytes:
    """The first weight stored as a pickle (``use_pickle``), one that would create ``marker``."""
    source = zipfile.ZipFile(io.BytesIO(good))
    name = next(n for n in source.namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(source.read(name))
    meta = next(iter(config["config"].values()))
    meta["use_pickle"] = True
    return rewrite(good, replace={"data/weights/model_weights_config.json":
                                  json.dumps(config).encode(),
                                  "data/weights/" + meta["path_name"]:
                                  pickle.dumps(Touch(marker))})


def test_weights_stream_the_program_state_dict(tmp_path, good):
    path = tmp_path / "m.pt2"
    path.write_bytes(good)
    expected = dict(state_dict_tensors(load_snapshot(path)))
    deflated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as source, \
            zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    for source in (path, good, io.BytesIO(good), deflated.getvalue()):
        with SnapshotWeights(source, name="m.pt2") as weights:
            assert set(weights.names) == set(expected)
            for name, value in expected.items():
                torch.testing.assert_close(weights.tensor(name), value)
            assert weights.is_param("layer.weight")


@pytest.mark.parametrize("hostile", ["zip_bomb", "traversal", "plain_pickle", "pickled_weight",
                                     "torch_save", "truncated"])
@pytest.mark.parametrize("as_file", [True, False])
def test_weight_streaming_refuses_hostile_archives_unread(tmp_path, good, hostile, as_file):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    if hostile == "torch_save":
        torch.save({"w": torch.ones(2), "evil": Touch(marker)}, buffer)
    data = {
        "zip_bomb": _zip_bomb,
        "traversal": lambda: rewrite(good, add={"{root}/../../evil": b"x"}),
        "plain_pickle": lambda: pickle.dumps(Touch(marker)),
        "pickled_weight": lambda: _pickled_weight(good, marker),
        "torch_save": buffer.getvalue,
        "truncated": lambda: good[: len(good) * 2 // 3],
    }[hostile]()
    path = tmp_path / f"{hostile}.pt2"
    path.write_bytes(data)
    reason = {"zip_bomb": "size above", "traversal": "unsafe entry", "plain_pickle": "a pickle",
              "pickled_weight": "stored as a pickle", "torch_save": "pickle entry",
              "truncated": "truncated"}[hostile]
    with pytest.raises(BadSnapshotError, match=reason) as info:
        SnapshotWeights(path if as_file else io.BytesIO(data), name=str(path),
                        snapshot_id="evil", max_bytes=1_000_000)
    assert info.value.file == str(path) and info.value.snapshot_id == "evil"
    assert not marker.exists()


def test_weights_changed_after_the_check_are_refused(tmp_path, good):
    path = tmp_path / "m.pt2"
    path.write_bytes(good)
    with SnapshotWeights(path) as weights:
        info = next(i for i in zipfile.ZipFile(path).infolist()
                    if i.filename.endswith("data/weights/weight_0"))
        with open(path, "r+b") as fh:  # rewrite the stored tensor in place, CRC left as it was
            fh.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<2H", fh.read(4))
            fh.seek(info.header_offset + 30 + name_length + extra_length)
            fh.write(b"\xff" * 4)
        with pytest.raises(BadSnapshotError, match="unreadable|changed") as caught:
            for name in weights.names:
                weights.tensor(name)
        assert caught.value.file == str(path)


def test_artifact_weights_name_the_lake_file(tmp_path):
    root = write_lake(tmp_path / "lake")
    lake = ParquetLake(str(root))
    with artifact_weights(lake, "artifacts/ads@1.pt2", snapshot_id="ads@1") as weights:
        assert set(weights.names) == {"layer.weight", "layer.bias"}
        assert weights.tensor("layer.weight").shape == (1, 2)
    os.remove(root / "artifacts" / "ranker@1.pt2")
    with pytest.raises(BadSnapshotError, match="missing") as info:
        artifact_weights(lake, "artifacts/ranker@1.pt2", snapshot_id="ranker@1")
    assert info.value.file == f"{root}/artifacts/ranker@1.pt2"
