"""The contract reader, validator and SQL copy on fuzzed bad lakes, and on a lake that grows
while it is read.

Whatever the input, the outcome is a problem list, a :class:`ContractError` naming the table,
or a correct result: never another exception, and never a half-written copy.
"""

import contextlib
import functools
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from hawkeye_dagster.contract import TABLES
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.to_sql import copy_lake_to_sql
from hawkeye_dagster.lake.validate import Problem, validate_lake
from lake_factory import DATASETS, FEATURES, RANKER, lake_tables, postgres_schema, write_lake

WEIRD_NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
                      min_size=1, max_size=12)
BAD_VALUES = st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0])


@functools.lru_cache(maxsize=1)
def _clean() -> dict:
    return lake_tables()


def _flat(tables: dict) -> list[tuple[str, str | None]]:
    """(table, model/dataset or None) of every stored Arrow table."""
    return [(n, k) for n, t in tables.items() for k in (t if isinstance(t, dict) else [None])]


def _get(tables, at):
    name, key = at
    return tables[name] if key is None else tables[name][key]


def _put(tables, at, table):
    name, key = at
    tables = dict(tables)
    tables[name] = table if key is None else {**tables[name], key: table}
    return tables


KINDS = ("drop", "as_string", "bad_values", "rename_feature", "empty", "duplicate", "cycle",
         "all_null")


@st.composite
def mutations(draw):
    """A change to the clean tables, as a short plan ``(kind, (table, model), column, value)``:
    most break the contract, some are legal oddities."""
    at = draw(st.sampled_from(_flat(_clean())))
    table = _get(_clean(), at)
    kind = draw(st.sampled_from(KINDS))
    keys = TABLES[at[0]].partition_keys if TABLES[at[0]].feature_columns else ()
    columns = [c for c in table.column_names if c not in keys]  # those are folder names
    if kind == "bad_values":
        columns = [f.name for f in table.schema if pa.types.is_floating(f.type)] or columns
        return kind, at, draw(st.sampled_from(columns)), draw(BAD_VALUES)
    if kind == "rename_feature":
        model = draw(st.sampled_from(sorted(FEATURES)))
        return kind, ("serving_samples", model), draw(st.sampled_from(FEATURES[model])), \
            draw(WEIRD_NAMES)
    return kind, at, draw(st.sampled_from(columns)), None


def _apply(plan) -> dict:
    kind, at, column, value = plan
    tables = _clean()
    table = _get(tables, at)
    at_column = table.schema.get_field_index(column)
    if kind == "drop":
        table = table.drop_columns([column])
    elif kind == "as_string":
        values = table[column]
        table = table.set_column(at_column, column, pa.array(["[]"] * table.num_rows)
                                 if pa.types.is_list(values.type)
                                 else pc.cast(values, pa.string(), safe=False))
    elif kind == "bad_values" and pa.types.is_floating(table[column].type):
        values = np.array(table[column].to_numpy(zero_copy_only=False), dtype=np.float64)
        values[len(values) // 2:] = value
        table = table.set_column(at_column, column, pa.array(values, table[column].type))
    elif kind == "rename_feature":
        if value in table.column_names or value in TABLES["serving_samples"].column_names:
            return tables
        table = table.rename_columns([value if c == column else c for c in table.column_names])
        features = tables["model_features"]
        names = [value if (m == at[1] and f == column) else f for m, f in zip(
            features["model_id"].to_pylist(), features["feature_name"].to_pylist())]
        tables = _put(tables, ("model_features", None),
                      features.set_column(2, "feature_name", pa.array(names)))
    elif kind == "empty":
        table = table.slice(0, 0)
    elif kind == "duplicate":
        table = pa.concat_tables([table, table])
    elif kind == "cycle":
        at, table = ("lineage_edges", None), pa.concat_tables([tables["lineage_edges"], pa.table(
            {"upstream_id": ["clicks.7d"], "downstream_id": ["raw.clicks"]})])
    elif kind == "all_null":
        table = table.set_column(at_column, column, pa.nulls(table.num_rows, table[column].type))
    return _put(tables, at, table)


def _exercise(root) -> list[Problem]:
    """Validate and read every table: problems or ContractErrors only."""
    reader = ParquetLake(str(root))
    problems = validate_lake(reader, check_artifacts=False)
    assert all(isinstance(p, Problem) and p.table and "\n" not in str(p) for p in problems)
    for table in TABLES:
        try:
            reader.read_arrow(table)
        except ContractError as exc:
            assert exc.table == table or table in str(exc)
    return problems


def _copy_or_contract_error(root, db) -> None:
    try:
        copy_lake_to_sql(ParquetLake(str(root)), f"sqlite:///{db}")
    except ContractError as exc:
        assert exc.table


# no shrinking: a failing plan is already short, and shrinking rewrites whole lakes
@settings(max_examples=20, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=mutations(), corrupt=st.sampled_from([None, None, "truncate", "garbage", "zero"]))
def test_fuzzed_lakes_give_problems_or_results(tmp_path_factory, plan, corrupt):
    kind = plan[0]
    root = write_lake(tmp_path_factory.mktemp("fuzz") / "lake", _apply(plan), artifacts=False)
    if corrupt:
        victim = root / "models" / "part-0.parquet"
        good = victim.read_bytes()
        victim.write_bytes({"truncate": good[: len(good) // 2], "zero": b"",
                            "garbage": os.urandom(len(good))}[corrupt])
    problems = _exercise(root)
    if corrupt:
        assert any(p.table == "models" and p.file.endswith("part-0.parquet") for p in problems)
    if kind == "cycle":
        assert any(p.table == "lineage_edges" and "cycle" in p.reason for p in problems)
    _copy_or_contract_error(root, tmp_path_factory.mktemp("db") / "copy.sqlite")


def test_clean_lake_with_quote_laden_names_has_no_problems(tmp_path):
    names = {"clicks.7d": 'cl"icks\' ; drop table x; --', "größe": "größe ünïcødé 名前"}
    tables = _clean()
    serving = tables["serving_samples"][RANKER]
    serving = serving.rename_columns([names.get(c, c) for c in serving.column_names])
    features = tables["model_features"]
    renamed = [names[f] if m == RANKER and f in names else f for m, f in zip(
        features["model_id"].to_pylist(), features["feature_name"].to_pylist())]
    training = tables["training_data"][DATASETS[RANKER]]
    training = training.rename_columns([names.get(c, c) for c in training.column_names])
    tables = _put(_put(tables, ("serving_samples", RANKER), serving), ("model_features", None),
                  features.set_column(2, "feature_name", pa.array(renamed)))
    tables = _put(tables, ("training_data", DATASETS[RANKER]), training)
    root = write_lake(tmp_path / "lake", tables, artifacts=False)
    assert _exercise(root) == []
    read = ParquetLake(str(root)).serving_samples(RANKER)
    assert set(names.values()) <= set(read.columns)
    db = tmp_path / "copy.sqlite"
    copy_lake_to_sql(ParquetLake(str(root)), f"sqlite:///{db}")
    columns = {c["name"] for c in sa.inspect(sa.create_engine(f"sqlite:///{db}")).get_columns(
        "serving_samples")}
    assert set(names.values()) <= columns


def _write_atomically(table: pa.Table, path) -> None:
    """How a publisher adds a file: written under a hidden name, then renamed into place."""
    hidden = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, hidden)
    os.replace(hidden, path)


def test_reads_stay_consistent_while_files_appear(tmp_path):
    root = write_lake(tmp_path / "lake", artifacts=False)
    reader = ParquetLake(str(root))
    base = reader.read_arrow("serving_samples", equals={"model_id": RANKER})
    snapshots = reader.read_arrow("snapshots")
    folder = root / "serving_samples" / f"model_id={RANKER}"
    template = next(folder.glob("date=*/*.parquet"))
    extra = pq.read_table(template)
    stop = threading.Event()
    written = []

    def publish():
        for i in range(60):
            if stop.is_set():
                break
            day = folder / f"date={template.parent.name.removeprefix('date=')}"
            _write_atomically(extra, day / f"new-{i:03d}.parquet")
            _write_atomically(snapshots, root / "snapshots" / f"new-{i:03d}.parquet")
            written.append(i)

    writer = threading.Thread(target=publish)
    writer.start()
    try:
        for _ in range(30):
            read = reader.read_arrow("serving_samples", equals={"model_id": RANKER})
            added, rest = divmod(read.num_rows - base.num_rows, extra.num_rows)
            assert rest == 0 and 0 <= added <= 60          # whole files, never half of one
            ids = pc.value_counts(read["request_id"]).field("counts")
            assert pc.max(ids).as_py() == added + 1 or added == 0
            seen = reader.read_arrow("snapshots")
            assert seen.num_rows % snapshots.num_rows == 0
            assert validate_lake(reader, check_artifacts=False) is not None
    finally:
        stop.set()
        writer.join()
    final = reader.read_arrow("serving_samples", equals={"model_id": RANKER})
    assert final.num_rows == base.num_rows + len(written) * extra.num_rows


@pytest.mark.parametrize("database", [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_copy_that_fails_leaves_nothing(tmp_path, database):
    root = write_lake(tmp_path / "lake", artifacts=False)
    victim = root / "training_metrics" / "part-0.parquet"  # copied after most tables
    victim.write_bytes(victim.read_bytes()[:100])
    if database == "sqlite":
        context = contextlib.nullcontext((f"sqlite:///{tmp_path / 'copy.sqlite'}", None))
    else:
        context = postgres_schema()
    with context as (url, schema):
        with pytest.raises(ContractError, match="training_metrics"):
            copy_lake_to_sql(ParquetLake(str(root)), url, schema=schema)
        assert sa.inspect(sa.create_engine(url)).get_table_names(schema=schema) == []
