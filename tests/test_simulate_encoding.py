"""The simulator's varied encodings: the same lake content as the canonical encoding, stored
as many writers would store it, and read back identically by the project."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hawkeye_dagster.cli import main
from hawkeye_dagster.contract import TABLES
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.validate import validate_lake
from hawkeye_dagster.simulate import simulate
from lake_factory import assert_same


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same world (upstream_corruption, seed 3) written canonically and varied."""
    root = tmp_path_factory.mktemp("encodings")
    lakes = {}
    for encoding in ("canonical", "varied"):
        lake = root / encoding
        truth = simulate(lake, scenario="upstream_corruption", seed=3, scale="small",
                         encoding=encoding)
        lakes[encoding] = (lake, truth)
    return lakes


def _stored_types(lake: Path) -> dict[str, set[str]]:
    """Per table, every stored Arrow type of its timestamp and string columns (plain pyarrow)."""
    found: dict[str, set[str]] = {}
    for path in lake.rglob("*.parquet"):
        table = path.relative_to(lake).parts[0]
        schema = pq.read_schema(path)
        found.setdefault(table, set()).update(
            str(f.type) for f in schema
            if pa.types.is_timestamp(f.type) or pa.types.is_dictionary(f.type)
            or pa.types.is_large_string(f.type) or pa.types.is_string(f.type))
    return found


def test_varied_lake_really_uses_the_contracts_freedoms(pair):
    canonical, varied = (_stored_types(pair[k][0]) for k in ("canonical", "varied"))
    assert {t for ts in canonical.values() for t in ts} == {"timestamp[us, tz=UTC]", "string"}
    seen = {t for ts in varied.values() for t in ts}
    assert any(t.startswith("timestamp[") and "tz=" not in t for t in seen)  # naive
    assert any("tz=Asia/Kolkata" in t or "tz=America/New_York" in t for t in seen)
    assert "large_string" in seen and any(t.startswith("dictionary<") for t in seen)
    lake = pair["varied"][0]
    assert len(list(lake.rglob("*.parquet"))) > len(list(pair["canonical"][0].rglob("*.parquet")))
    assert any(" " in p.parent.name for p in lake.rglob("*.parquet"))  # files a level deeper
    batch_kinds = set()
    for artifact in (lake / "artifacts").rglob("*.pt2"):
        with zipfile.ZipFile(artifact) as archive:
            program = next(n for n in archive.namelist() if n.endswith("models/model.json"))
            batch_kinds.add(json.loads(archive.read(program))["range_constraints"].__repr__())
    assert len(batch_kinds) > 1  # models declare their batch dimension differently


def test_same_truth_and_same_tables_read_back(pair):
    (canonical, truth_c), (varied, truth_v) = pair["canonical"], pair["varied"]
    assert truth_c == truth_v
    assert validate_lake(ParquetLake(str(varied))) == []
    left, right = ParquetLake(str(canonical)), ParquetLake(str(varied))
    for table in TABLES:
        if table in ("serving_samples", "training_data"):
            key = TABLES[table].partition_keys[0]
            owners = left.read(table, columns=[key])[key].unique()
            for owner in owners[:2]:
                a, b = (r.read(table, equals={key: owner}) for r in (left, right))
                assert_same(a, b[a.columns], table)
            continue
        a, b = left.read(table), right.read(table)
        assert_same(a, b[a.columns], table)


def test_triage_report_identical_on_both_encodings(pair, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HAWKEYE_HOME", str(tmp_path))
    reports = []
    for encoding in ("canonical", "varied"):
        assert main(["triage", "--lake", str(pair[encoding][0]), "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0]["verdict"] == "root_cause_found"
    assert reports[0] == reports[1]


def test_simulate_command_takes_the_encoding(tmp_path):
    assert main(["simulate", "--out", str(tmp_path / "lake"), "--scenario", "clean",
                 "--encoding", "canonical"]) == 0
    assert _stored_types(tmp_path / "lake")["topline_metrics"] == {"timestamp[us, tz=UTC]",
                                                                    "string"}
