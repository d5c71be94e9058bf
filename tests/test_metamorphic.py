"""Metamorphic tests: how a lake is encoded must not change what hawkeye-dagster concludes.

Each simulated world is written once in the canonical encoding (the baseline) and then
re-encoded by ``tests/reencode.py`` with a seeded draw of every freedom of the contract. On
every draw the lake must validate, and the triage must give the report the baseline gives, for
the automatic entry and for each incident's own entry: verdict, ranked root causes (kinds, ids,
confidences to 1e-9), suspects, mitigations and every step. The only thing the re-encoder
changes on purpose is where snapshot artifacts live, so artifact paths are mapped back before
comparing. Before comparing, each draw is checked to really store things differently and to
hold the same logical content (read with plain pyarrow), so that a pass means something and a
failure is the project's.

Fast: one draw of the demo world (five incidents of five kinds) and one of a clean world, two
worlds with nothing but their serving rows reordered, a hypothesis-driven validation of the small
factory lake, the CLI's exit status, and the SQL copies. Slow (``-m slow``): a draw of every scenario (``HAWKEYE_METAMORPHIC_DRAWS`` sets how many),
and the simulator's own varied encoding of every scenario.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import reencode as R
from hawkeye_dagster.lake.open import open_lake
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.validate import validate_lake
from hawkeye_dagster.simulate.scenarios import SCENARIOS
from lake_factory import lake_tables, logical, sql_url_copy
from triage_reports import World, report_differences, triage

FAST_DRAWS = [("demo", 1), ("clean", 2)]
#: draws per scenario in the slow suite: one in CI; ``HAWKEYE_METAMORPHIC_DRAWS=20`` for a sweep
#: (seed-major, so a sweep cut short has covered every scenario alike)
SLOW_DRAWS = [(scenario, seed)
              for seed in range(100, 100 + int(os.environ.get("HAWKEYE_METAMORPHIC_DRAWS", "1")))
              for scenario in SCENARIOS]
def artifact_renames(world: World, root: Path, *, absolute: bool = False) -> dict[str, str]:
    """Each re-encoded ``snapshots.artifact`` value (and, for SQL copies, its absolute path) ->
    the canonical value, longest first."""
    canonical, moved = ({sid: a for sid, a in zip(t["snapshot_id"].to_pylist(),
                                                   t["artifact"].to_pylist())}
                        for t in (R.read_table(world.canonical, "snapshots"),
                                  R.read_table(root, "snapshots")))
    renames = {}
    for sid, artifact in moved.items():
        if absolute and not artifact.startswith("file:"):
            renames[f"{root}/{artifact}"] = canonical[sid]
        renames[artifact] = canonical[sid]
    return dict(sorted(renames.items(), key=lambda item: -len(item[0])))


def renamed(value, renames: dict[str, str]):
    if isinstance(value, dict):
        return {k: renamed(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [renamed(v, renames) for v in value]
    if isinstance(value, str):
        for old, new in renames.items():
            value = value.replace(old, new)
    return value


def reencoded(world: World, seed: int, root: Path) -> R.LakeEncoding:
    """Write the world's draw ``seed`` under ``root``; checks that it stores things differently
    from the canonical lake and holds the same content, so a report that differs is not ours."""
    encoding = R.seeded_encoding(world.logical, seed)
    R.write_encoded(root, world.logical, encoding)
    assert R.stored_types(root) - R.stored_types(world.canonical), "the draw changed no type"
    assert R.differences(world.logical, root) == [], R.encoding_summary(encoding)
    return encoding


def check_draw(world: World, seed: int, root: Path) -> None:
    encoding = reencoded(world, seed, root)
    where = f"{world.scenario} draw {seed}: {R.encoding_summary(encoding)}"
    assert [str(p) for p in validate_lake(open_lake(str(root)))] == [], where
    renames = artifact_renames(world, root)
    for name, options in world.entries.items():
        report = renamed(triage(lake=str(root), **options), renames)
        assert report_differences(world.reports[name], report) == [], f"entry {name}; {where}"


@pytest.mark.parametrize("scenario, seed", FAST_DRAWS)
def test_report_is_the_same_in_any_encoding(scenario, seed, worlds, tmp_path):
    check_draw(worlds(scenario), seed, tmp_path / "lake")


@pytest.mark.slow
@pytest.mark.parametrize("scenario, seed", SLOW_DRAWS)
def test_report_is_the_same_in_any_encoding_slow(scenario, seed, worlds, tmp_path):
    check_draw(worlds(scenario), seed, tmp_path / "lake")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_simulators_varied_encoding_gives_the_canonical_report(scenario, simulated, worlds):
    """The simulator's own varied encoding (the ``simulated`` fixture's lakes) is one more."""
    world = worlds(scenario)
    lake, _ = simulated(scenario)
    renames = artifact_renames(world, Path(lake))
    for name, options in world.entries.items():
        report = renamed(triage(lake=str(lake), **options), renames)
        assert report_differences(world.reports[name], report) == [], name


@pytest.mark.parametrize("scenario, shuffle, entries", [
    ("demo", 0, ("transform_change", "upstream_corruption")),
    ("feature_alert_early", 3, ("auto",)),  # this order also changes the second root cause
])
def test_row_order_alone_does_not_change_the_report(scenario, shuffle, entries, worlds,
                                                    tmp_path):
    """The canonical lake with only its serving rows shuffled inside each file: the contract
    gives rows no order, so nothing a report says may depend on it."""
    world = worlds(scenario)
    base = R.canonical_encoding(world.logical)
    serving = base.tables["serving_samples"]
    writer = dataclasses.replace(serving.writers[0], shuffle_rows=True)
    encoding = dataclasses.replace(base, tables={
        **base.tables,
        "serving_samples": dataclasses.replace(serving, writers=(writer,), seed=shuffle)})
    root = R.write_encoded(tmp_path / "lake", world.logical, encoding)
    day = next((world.canonical / "serving_samples").glob("*/*/part-0.parquet"))
    moved = root / day.relative_to(world.canonical)
    assert pq.read_table(moved)["request_id"] != pq.read_table(day)["request_id"]
    assert R.differences(world.logical, root) == []
    for name in entries:
        report = triage(lake=str(root), **world.entries[name])
        assert report_differences(world.reports[name], report) == [], name


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                           marks=pytest.mark.postgres)])
def test_sql_copy_of_a_reencoded_lake_gives_the_same_report(backend, worlds, tmp_path):
    """A re-encoded lake copied into SQL (``copy_lake_to_sql`` reads it through the project's
    Parquet reader) reports what the canonical Parquet lake reports."""
    world = worlds("demo")
    root = tmp_path / "lake"
    reencoded(world, 3, root)
    renames = artifact_renames(world, root, absolute=True)
    with sql_url_copy(ParquetLake(str(root)), backend, tmp_path) as url:
        assert [str(p) for p in validate_lake(open_lake(sql_url=url))] == []
        for name in ("auto", "nan_snapshot", "upstream_corruption"):
            report = renamed(triage(sql=url, **world.entries[name]), renames)
            assert report_differences(world.reports[name], report) == [], name


@pytest.fixture(scope="module")
def factory_content() -> R.Logical:
    return logical(lake_tables())


@settings(max_examples=10, deadline=None, database=None,
          phases=(Phase.explicit, Phase.generate),  # shrinking re-writes whole lakes: minutes
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_validate_passes_on_every_drawn_encoding(data, factory_content, tmp_path_factory):
    """Hypothesis draws encodings of the factory lake (ids with spaces, quotes, dots and
    non-ASCII letters, so every Hive quoting matters); each one validates."""
    encoding = data.draw(R.lake_encodings(factory_content))
    root = R.write_encoded(tmp_path_factory.mktemp("drawn"), factory_content, encoding)
    assert [str(p) for p in validate_lake(open_lake(str(root)))] == [], \
        R.encoding_summary(encoding)


def test_validate_command_exits_0_on_a_reencoded_lake(tmp_path, factory_content):
    root = R.write_encoded(tmp_path / "lake", factory_content,
                           R.seeded_encoding(factory_content, 11))
    done = subprocess.run([str(Path(sys.executable).parent / "hawkeye-dagster"), "validate",
                           "--lake", str(root)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
