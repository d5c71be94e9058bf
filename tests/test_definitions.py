"""The one Definitions object: it loads, every asset is documented, and the spec snapshot holds.

Regenerate the snapshot after an intended change with
``HAWKEYE_UPDATE_SNAPSHOTS=1 pytest tests/test_definitions.py``.
"""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from hawkeye_dagster.definitions import build_defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_specs.json"


@pytest.fixture(scope="module")
def defs(tmp_path_factory) -> dg.Definitions:
    from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource

    root = tmp_path_factory.mktemp("defs")
    return build_defs({"telemetry": TelemetrySource(lake=str(root / "lake")),
                       "storage": HawkeyeStorage(root=str(root / "out"))})


def _spec_summary(spec: dg.AssetSpec) -> dict:
    return {
        "group": spec.group_name,
        "owners": sorted(spec.owners),
        "kinds": sorted(spec.kinds),
        "partitions": type(spec.partitions_def).__name__ if spec.partitions_def else None,
        "deps": sorted(dep.asset_key.to_user_string() for dep in spec.deps),
    }


def test_definitions_validate(defs):
    repo = defs.get_repository_def()
    assert repo.asset_graph.get_all_asset_keys()


def test_every_asset_is_documented_and_owned(defs):
    for spec in defs.resolve_all_asset_specs():
        key = spec.key.to_user_string()
        assert spec.description, f"{key} has no description"
        assert spec.group_name and spec.group_name != "default", f"{key} has no group"
        assert spec.owners, f"{key} has no owner"
        assert spec.kinds, f"{key} has no kinds"


def test_asset_specs_match_snapshot(defs):
    current = {spec.key.to_user_string(): _spec_summary(spec)
               for spec in defs.resolve_all_asset_specs()}
    if os.environ.get("HAWKEYE_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())
