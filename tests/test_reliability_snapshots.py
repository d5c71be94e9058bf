"""Hostile snapshots reaching the Dagster diagnostics, not just the loader.

``test_snapshot_io.py`` covers the archive checks one by one; here hostile artifacts and ids
come in through the lake, as a publisher would put them there, and run through the
``snapshot_baseline`` asset: its blocking ``artifact_is_valid`` check fails, nothing in the
file is run, and nothing is written outside the storage folder.
"""

import pickle
import struct
import zipfile

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hawkeye_dagster.assets.snapshots import snapshot_baseline
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from lake_factory import write_lake


class Touch:
    """Unpickling this creates ``path``: the proof that a pickle was (not) run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _lying_zip(path) -> None:
    """A small zip whose headers claim a 4 GiB entry: a zip bomb as the loader first sees it."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data/weights/bomb", b"\0" * 16)
    data = bytearray(path.read_bytes())
    for signature, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        offset = data.index(signature)
        data[offset + at:offset + at + 4] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(data))


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def world(tmp_path):
    lake = write_lake(tmp_path / "lake")
    outside = tmp_path / "outside"
    outside.mkdir()
    return lake, outside, tmp_path / "out"


def _baseline(lake, out, snapshot_id):
    resources = {"telemetry": TelemetrySource(lake=str(lake)),
                 "storage": HawkeyeStorage(root=str(out))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("snapshot", [snapshot_id])
        result = dg.materialize([snapshot_baseline], partition_key=snapshot_id, instance=instance,
                                resources=resources, raise_on_error=False)
    return {c.check_name: c for c in result.get_asset_check_evaluations()}, result


@pytest.mark.parametrize("hostile", ["pickle", "torch_save", "zip_bomb", "traversal"])
def test_hostile_artifacts_fail_the_check_and_run_nothing(world, hostile):
    import torch

    lake, outside, out = world
    artifact = lake / "artifacts" / "ranker@2.pt2"
    marker = outside / "pwned"
    if hostile == "pickle":
        artifact.write_bytes(pickle.dumps(Touch(marker)))
    elif hostile == "torch_save":
        torch.save({"w": torch.ones(2), "evil": Touch(marker)}, artifact)
    elif hostile == "zip_bomb":
        _lying_zip(artifact)
    else:  # a valid program, but outside the lake, named through ``..``
        (outside / "evil.pt2").write_bytes(artifact.read_bytes())
        snapshots = pq.read_table(lake / "snapshots" / "part-0.parquet")
        paths = ["../outside/evil.pt2" if s == "ranker@2" else a for s, a in zip(
            snapshots["snapshot_id"].to_pylist(), snapshots["artifact"].to_pylist())]
        pq.write_table(snapshots.set_column(snapshots.schema.get_field_index("artifact"),
                                            "artifact", pa.array(paths)),
                       lake / "snapshots" / "part-0.parquet")
    before_outside, before_lake = _files(outside), _files(lake)
    checks, result = _baseline(lake, out, "ranker@2")
    check = checks["artifact_is_valid"]
    assert not check.passed
    assert {"pickle": "pickle", "torch_save": "pickle", "zip_bomb": "size",
            "traversal": "leaves the lake"}[hostile] in check.description
    assert not marker.exists()
    assert _files(outside) == before_outside and _files(lake) == before_lake
    assert all(not name.startswith("..") for name in _files(out))


@pytest.mark.parametrize("snapshot_id", ["..", "../../escaped", "a/../../b"])
def test_ids_that_would_leave_storage_write_nothing_outside(world, snapshot_id):
    lake, outside, out = world
    snapshots = pq.read_table(lake / "snapshots" / "part-0.parquet")
    ids = [snapshot_id if s == "ranker@2" else s for s in snapshots["snapshot_id"].to_pylist()]
    pq.write_table(snapshots.set_column(snapshots.schema.get_field_index("snapshot_id"),
                                        "snapshot_id", pa.array(ids)),
                   lake / "snapshots" / "part-0.parquet")
    before = _files(lake.parent)
    _, result = _baseline(lake, out, snapshot_id)
    assert not result.success
    written = _files(lake.parent) - before
    assert all(name.startswith("out/") for name in written), written
