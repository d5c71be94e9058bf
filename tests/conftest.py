"""Shared fixtures.

``simulated(scenario, seed=0, scale="small")`` returns ``(lake_path, truth)``
for a simulated lake (see :mod:`hawkeye_dagster.simulate`), generated once
per test session and shared by every test that asks for the same arguments.
Treat the lake as read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hawkeye_dagster.simulate import simulate
from triage_reports import worlds  # noqa: F401  (a session fixture)


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    lakes: dict[tuple[str, int, str], tuple[Path, dict]] = {}

    def make(scenario: str = "demo", seed: int = 0, scale: str = "small") -> tuple[Path, dict]:
        key = (scenario, seed, scale)
        if key not in lakes:
            lake = tmp_path_factory.mktemp(f"{scenario}-{seed}-{scale}") / "lake"
            lakes[key] = (lake, simulate(lake, scenario=scenario, seed=seed, scale=scale))
        return lakes[key]

    return make


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                              marks=pytest.mark.postgres)])
def sql(request, parquet, tmp_path_factory):
    """The module's ``parquet`` lake copied into SQLite and into PostgreSQL (a fresh schema)."""
    from lake_factory import sql_copy

    with sql_copy(parquet, request.param, tmp_path_factory.mktemp("db")) as lake:
        yield lake
