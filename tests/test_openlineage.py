"""OpenLineage events, built and written by the official client (``openlineage-python``), read
as lineage tables, and the lineage they add reaching the upstream root cause, pause planning,
the alert sensor and triage."""

from __future__ import annotations

import contextlib
import json
import time
import uuid

import pandas as pd
import pytest
from lake_factory import sql_url_copy
from lineage_world import lineage_tables, node_stats, shift, utc, write_lake
from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    JobEvent,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    StaticDataset,
)
from openlineage.client.facet_v2 import (
    column_lineage_dataset,
    job_type_job,
    parent_run,
    schema_dataset,
    source_code_location_job,
    sql_job,
)
from openlineage.client.serde import Serde
from openlineage.client.transport.file import FileConfig, FileTransport

from hawkeye_dagster.analysis.lineage_graph import build_lineage_graph
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.gather.lineage import lineage_from_reader
from hawkeye_dagster.gather.upstream import upstream_from_reader
from hawkeye_dagster.lake.lineage_union import merge_lineage
from hawkeye_dagster.lake.openlineage import DatasetMapping, read_openlineage
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.sql import SqlLake
from hawkeye_dagster.mitigation.planning import plan_pause
from hawkeye_dagster.resources import TelemetrySource
from hawkeye_dagster.time_range import TimeRange

DB, REPLICA, S3, KAFKA = "postgres://db:5432", "postgres://replica:5432", "s3://bucket", \
    "kafka://broker:9092"
ORDERS = "analytics.public.orders"


def dataset(kind, namespace: str, name: str, *, fields=None, lineage=None):
    """An input or output dataset; ``fields`` ``[(name, type)]`` give a schema facet,
    ``lineage`` ``{column: [(namespace, name, field)]}`` a column-lineage facet."""
    facets = {}
    if fields:
        facets["schema"] = schema_dataset.SchemaDatasetFacet(fields=[
            schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in fields])
    if lineage:
        facets["columnLineage"] = column_lineage_dataset.ColumnLineageDatasetFacet(fields={
            column: column_lineage_dataset.Fields(inputFields=[
                column_lineage_dataset.InputField(namespace=ns, name=n, field=f)
                for ns, n, f in sources])
            for column, sources in lineage.items()})
    return kind(namespace=namespace, name=name, facets=facets)


def job(namespace: str, name: str, *, version=None, sql=None, airflow=False) -> Job:
    facets = {}
    if version:
        facets["sourceCodeLocation"] = source_code_location_job.SourceCodeLocationJobFacet(
            type="git", url=f"https://git.example/{name}", version=version)
    if sql:
        facets["sql"] = sql_job.SQLJobFacet(query=sql)
    if airflow:
        facets["jobType"] = job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="AIRFLOW", jobType="TASK")
    return Job(namespace=namespace, name=name, facets=facets)


def run(the_job: Job, inputs, outputs, start: str, *, end=RunState.COMPLETE,
        dag: str | None = None) -> list[RunEvent]:
    """One run: a START with its datasets, then ``end`` an hour later with them again (as the
    Spark and Airflow integrations emit them); ``dag`` makes it an Airflow task of that DAG."""
    run_id = str(uuid.uuid4())
    facets = {"parent": parent_run.ParentRunFacet(
        run=parent_run.Run(runId=str(uuid.uuid4())),
        job=parent_run.Job(namespace=the_job.namespace, name=dag))} if dag else {}
    inputs = [i if isinstance(i, InputDataset) else InputDataset(*i) for i in inputs]
    outputs = [o if isinstance(o, OutputDataset) else OutputDataset(*o) for o in outputs]
    when = pd.Timestamp(start, tz="UTC")
    return [RunEvent(eventType=state, eventTime=(when + pd.Timedelta(hours=hour)).isoformat(),
                     run=Run(runId=run_id, facets=facets), job=the_job, inputs=inputs,
                     outputs=outputs)
            for state, hour in ((RunState.START, 0), (end, 1))]


def append(events, path):
    """FileTransport's append mode: one JSON-lines file."""
    transport = FileTransport(FileConfig(log_file_path=str(path), append=True))
    for event in events:
        transport.emit(event)
    return path


def per_event(events, folder, *, debug_mode=False):
    """FileTransport's default mode: a file per event (``debug_mode``: pretty-printed)."""
    folder.mkdir(parents=True, exist_ok=True)
    transport = FileTransport(FileConfig(log_file_path=str(folder / "ol"), debug_mode=debug_mode))
    for event in events:
        transport.emit(event)
        time.sleep(0.002)  # its file names are timestamps to the microsecond
    assert len(list(folder.glob("ol-*.json"))) == len(events)
    return folder


def _edges(tables) -> set[tuple[str, str]]:
    return set(map(tuple, tables["lineage_edges"].to_numpy()))


def _world() -> list:
    """Two pipelines over two databases, one dataset with a column lineage."""
    load = job("airflow-prod", "clicks_dag.load", airflow=True)
    build = job("spark", "orders_build", version="a1")
    return [
        *run(load, [(KAFKA, "clicks")], [(S3, "raw/clicks")], "2026-10-01", dag="clicks_dag"),
        *run(build, [(S3, "raw/clicks"), (REPLICA, ORDERS)],
             [dataset(OutputDataset, DB, ORDERS, fields=[("user", "int"), ("clicks", "int")],
                      lineage={"clicks": [(S3, "raw/clicks", "n")]})], "2026-10-01 03:00"),
        DatasetEvent(eventTime="2026-10-01T00:00:00+00:00",
                     dataset=StaticDataset(namespace=REPLICA, name="public.profiles")),
        JobEvent(eventTime="2026-10-01T00:00:00+00:00", job=job("views", "profile_view"),
                 inputs=[InputDataset(REPLICA, "public.profiles")],
                 outputs=[OutputDataset(REPLICA, ORDERS)]),
    ]


def _json_array(events, folder):
    path = folder / "array.json"
    path.write_text(json.dumps([Serde.to_dict(e) for e in events]))
    return path


def _export(events, folder):
    path = folder / "export.json"
    path.write_text(json.dumps({"events": [Serde.to_dict(e) for e in events]}, indent=2))
    return path


def _nested_folder(events, folder):
    """FileTransport files in nested folders, with an ``.ndjson`` of the rest beside them."""
    per_event(events[:3], folder / "2026" / "10")
    append(events[3:], folder / "rest.ndjson")
    (folder / "notes.txt").write_text("not events")
    return folder


def _pretty_lines(events, folder):
    """Pretty-printed documents one after another in one file (append with debug_mode)."""
    transport = FileTransport(FileConfig(log_file_path=str(folder / "debug.json"), append=True,
                                         debug_mode=True))
    for event in events:
        transport.emit(event)
    return folder / "debug.json"


@pytest.mark.parametrize("write", [
    lambda events, folder: per_event(events, folder / "events"),
    lambda events, folder: per_event(events, folder / "events", debug_mode=True),
    _nested_folder, _json_array, _export, _pretty_lines,
], ids=["file_per_event", "file_per_event_debug", "nested_folder", "json_array", "export",
        "pretty_documents"])
def test_every_shape_reads_as_the_json_lines_file(tmp_path, write):
    events, shape = _world(), tmp_path / "shape"
    shape.mkdir()
    expected = read_openlineage(append(events, tmp_path / "events.jsonl"))
    tables = read_openlineage(write(events, shape))
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(
            tables[name].sort_values(list(frame.columns), ignore_index=True),
            frame.sort_values(list(frame.columns), ignore_index=True), obj=name)


def test_datasets_and_jobs_are_namespace_and_name(tmp_path):
    tables = read_openlineage(append(_world(), tmp_path / "events.jsonl"))
    nodes = tables["lineage_nodes"].set_index("node_id")
    # one table name in two databases is two nodes; an S3 key keeps its slashes
    assert nodes.loc[f"{DB}/{ORDERS}", "kind"] == "table"
    assert nodes.loc[f"{REPLICA}/{ORDERS}", "pipeline_id"] == "views/profile_view"
    assert nodes.loc[f"{S3}/raw/clicks", "pipeline_id"] == "airflow-prod/clicks_dag.load"
    assert nodes.loc[f"{KAFKA}/clicks", "kind"] == "source"
    assert nodes.loc[f"{REPLICA}/public.profiles", "kind"] == "source"   # a DatasetEvent's
    assert "raw.clicks" not in nodes.index and len(nodes) == 5
    assert _edges(tables) == {
        (f"{KAFKA}/clicks", f"{S3}/raw/clicks"), (f"{S3}/raw/clicks", f"{DB}/{ORDERS}"),
        (f"{REPLICA}/{ORDERS}", f"{DB}/{ORDERS}"), (f"{REPLICA}/public.profiles",
                                                  f"{REPLICA}/{ORDERS}")}
    pipelines = tables["pipelines"].set_index("pipeline_id")
    assert tuple(pipelines.loc["airflow-prod/clicks_dag.load"]) == ("airflow", "clicks_dag")
    assert tuple(pipelines.loc["spark/orders_build"]) == ("external", "orders_build")


def test_the_mapping_joins_lake_namespaces_to_lake_nodes(tmp_path):
    path = append(_world(), tmp_path / "events.jsonl")
    lake_ids = [ORDERS, "raw.clicks"]
    tables = read_openlineage(path, DatasetMapping(lake_namespaces=[DB]), lake_ids)
    nodes = set(tables["lineage_nodes"]["node_id"])
    assert ORDERS in nodes and f"{REPLICA}/{ORDERS}" in nodes   # the replica is not the lake's
    assert (f"{REPLICA}/{ORDERS}", ORDERS) in _edges(tables)
    aliased = read_openlineage(path, DatasetMapping(aliases={f"{S3}/raw/clicks": "raw.clicks"}),
                               lake_ids)
    assert (f"{KAFKA}/clicks", "raw.clicks") in _edges(aliased)
    assert ORDERS not in set(aliased["lineage_nodes"]["node_id"])   # DB is no lake namespace


def test_edges_come_from_each_run_not_each_job_name(tmp_path):
    events = [
        *run(job("team_a", "load"), [(DB, "a_in")], [(DB, "a_out")], "2026-10-01"),
        *run(job("team_b", "load"), [(DB, "b_in")], [(DB, "b_out")], "2026-10-01"),
        *run(job("team_a", "load"), [(DB, "c_in")], [(DB, "c_out")], "2026-10-02"),
    ]
    tables = read_openlineage(append(events, tmp_path / "events.jsonl"))
    assert _edges(tables) == {(f"{DB}/a_in", f"{DB}/a_out"), (f"{DB}/b_in", f"{DB}/b_out"),
                              (f"{DB}/c_in", f"{DB}/c_out")}
    assert set(tables["pipelines"]["pipeline_id"]) == {"team_a/load", "team_b/load"}


def test_failed_and_aborted_runs_are_counted_not_lineage(tmp_path):
    etl = job("etl", "orders")
    events = [*run(etl, [(DB, "raw")], [(DB, "clean")], "2026-10-01"),
              *run(etl, [(DB, "raw")], [(DB, "broken")], "2026-10-02", end=RunState.FAIL),
              *run(etl, [(DB, "other")], [(DB, "clean")], "2026-10-03", end=RunState.ABORT)]
    tables = read_openlineage(append(events, tmp_path / "events.jsonl"))
    assert _edges(tables) == {(f"{DB}/raw", f"{DB}/clean")}
    assert set(tables["lineage_nodes"]["node_id"]) == {f"{DB}/raw", f"{DB}/clean"}
    runs = tables["openlineage_runs"].set_index("outcome")["runs"]
    assert runs.to_dict() == {"ABORT": 1, "COMPLETE": 1, "FAIL": 1}


def test_a_job_rewriting_its_input_is_a_recorded_self_loop_not_a_cycle(tmp_path):
    merge = job("dbt", "orders_incremental")
    events = run(merge, [(DB, "orders"), (DB, "staging")], [(DB, "orders")], "2026-10-01")
    tables = read_openlineage(append(events, tmp_path / "events.jsonl"))
    assert _edges(tables) == {(f"{DB}/staging", f"{DB}/orders")}
    assert tables["lineage_self_loops"].to_dict("records") == [
        {"node_id": f"{DB}/orders", "pipeline_id": "dbt/orders_incremental"}]
    graph = build_lineage_graph(tables["lineage_nodes"], tables["lineage_edges"],
                                pipelines=tables["pipelines"])
    assert graph.nodes[f"{DB}/orders"]["pipeline_id"] == "dbt/orders_incremental"


def test_code_sql_and_schema_changes_become_lineage_changes(tmp_path):
    def build(version, sql, start, fields):
        return run(job("spark", "orders_build", version=version, sql=sql), [(DB, "raw")],
                   [dataset(OutputDataset, DB, "orders", fields=fields)], start)

    two = [("user", "int"), ("clicks", "int")]
    events = [*build("a1", "select 1", "2026-10-01", two),
              *build("a1", "select 1", "2026-10-02", two),
              *build("b2", "select 1", "2026-10-03", two),
              *build("b2", "select 2", "2026-10-04", [*two, ("spend", "double")]),
              *build("a1", "select 1", "2026-10-05", [("user", "bigint"), ("clicks", "int")])]
    events[5:7] = events[5:7][::-1]        # arrival order is not time order
    changes = read_openlineage(append(events, tmp_path / "events.jsonl"))["lineage_changes"]
    code = changes[changes["change_type"] == "code"]
    assert list(code["ts"]) == [utc("2026-10-03"), utc("2026-10-04"), utc("2026-10-05")]
    assert set(code["node_id"]) == {f"{DB}/orders"}
    assert code["version"].str.split().str[0].tolist() == ["b2", "b2", "a1"]  # a rollback too
    assert code["version"].iloc[0] != code["version"].iloc[1]              # the SQL changed
    schema = changes[changes["change_type"] == "schema"].reset_index(drop=True)
    assert list(schema["ts"]) == [utc("2026-10-04"), utc("2026-10-05")]
    assert "added spend" in schema["description"][0]
    assert "removed spend" in schema["description"][1]
    assert "retyped user" in schema["description"][1]


def test_column_lineage_narrows_edges_to_columns(tmp_path):
    features = dataset(OutputDataset, DB, "user_features", lineage={
        "clicks_7d": [(DB, "clicks", "n")], "spend_7d": [(DB, "orders", "amount"),
                                                         (DB, "orders", "currency")]})
    events = [*run(job("spark", "features"), [(DB, "clicks"), (DB, "orders")], [features],
                   "2026-10-01"),
              *run(job("spark", "features"), [(DB, "refunds")],
                   [dataset(OutputDataset, DB, "user_features",
                            lineage={"spend_7d": [(DB, "refunds", "x")]})],
                   "2026-10-02", end=RunState.FAIL)]
    columns = read_openlineage(append(events, tmp_path / "events.jsonl"))["lineage_column_edges"]
    assert set(map(tuple, columns.to_numpy())) == {
        (f"{DB}/clicks", "n", f"{DB}/user_features", "clicks_7d"),
        (f"{DB}/orders", "amount", f"{DB}/user_features", "spend_7d"),
        (f"{DB}/orders", "currency", f"{DB}/user_features", "spend_7d")}


def test_malformed_events_name_the_file_and_line(tmp_path):
    path = append(_world()[:2], tmp_path / "events.jsonl")
    with path.open("a") as stream:
        stream.write('{"eventTime": "2026-10-01T00:00:00Z", "eventType": "START"\n')
    with pytest.raises(ContractError, match=r"line 3: not JSON") as err:
        read_openlineage(path)
    assert err.value.file == str(path)

    path.write_text(Serde.to_json(_world()[0]) + "\n\n"
                    + json.dumps({"eventTime": "2026-10-01T00:00:00Z"}) + "\n")
    with pytest.raises(ContractError, match=r"line 3: not an OpenLineage event \(no 'job'\)"):
        read_openlineage(path)

    folder = tmp_path / "folder"
    per_event(_world()[:2], folder)
    pretty = folder / "pretty.json"
    pretty.write_text(json.dumps(Serde.to_dict(_world()[0]), indent=2)[:-20])
    with pytest.raises(ContractError, match=r"line \d+: not JSON") as err:
        read_openlineage(folder)             # a folder names the file at fault
    assert err.value.file == str(pretty)

    (tmp_path / "latin1.jsonl").write_bytes("{\"name\": \"caf\xe9\"}\n".encode("latin-1"))
    with pytest.raises(ContractError, match="not UTF-8"):
        read_openlineage(tmp_path / "latin1.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ContractError, match="no OpenLineage events"):
        read_openlineage(tmp_path / "empty.jsonl")
    with pytest.raises(ContractError, match="not found"):
        read_openlineage(tmp_path / "missing")


def test_merge_keeps_the_lakes_rows(tmp_path):
    tables = read_openlineage(append(_world(), tmp_path / "events.jsonl"),
                              DatasetMapping(lake_namespaces=[DB]), [ORDERS])
    lake = {"lineage_nodes": pd.DataFrame({"node_id": [ORDERS, "ctr"],
                                           "kind": ["transform", "feature"],
                                           "pipeline_id": ["p_orders", None]}),
            "lineage_edges": pd.DataFrame({"upstream_id": [ORDERS], "downstream_id": ["ctr"]}),
            "pipelines": pd.DataFrame({"pipeline_id": ["p_orders"], "orchestrator": ["dagster"],
                                       "target": ["orders_schedule"]})}
    merged = merge_lineage(lake, tables)
    features = pd.DataFrame({"feature_name": ["ctr 7d"], "lineage_node_id": ["ctr"]})
    graph = build_lineage_graph(merged["lineage_nodes"], merged["lineage_edges"], features,
                                merged["pipelines"])
    assert graph.nodes[ORDERS]["kind"] == "transform"
    assert graph.nodes[ORDERS]["pipeline_id"] == "p_orders"          # the lake's row wins
    assert set(graph.predecessors(ORDERS)) == {f"{S3}/raw/clicks", f"{REPLICA}/{ORDERS}"}
    assert len(merged["lineage_column_edges"]) == 1


# --- OpenLineage feeds the analyses ---------------------------------------------------------------

ONSET = "2026-10-11 05:00"
CLICKS = f"{S3}/raw/clicks"


@pytest.fixture
def ol_lake(tmp_path):
    """lineage_world's lake, but ``t1`` is also fed by ``s3://bucket/raw/clicks``, a dataset and
    an Airflow pipeline that only OpenLineage knows; its null fraction jumps at 05:00 and
    everything below inherits it (``s1`` stays clean). Events in a FileTransport folder."""
    nodes = ("s1", "s2", "s3", "t1", "x1", "nf1", "nf2", "nf3", CLICKS)
    stats = shift(node_stats(nodes), [CLICKS], "null_fraction", ONSET, lambda v: v * 0 + 0.4)
    stats = shift(stats, ["t1", "x1", "nf1", "nf2"], "null_fraction", ONSET,
                  lambda v: v * 0 + 0.2)
    write_lake(tmp_path / "lake", {"lineage_node_stats": stats})
    events = [*run(job("airflow-prod", "clicks_dag.load", airflow=True), [(KAFKA, "clicks")],
                   [(S3, "raw/clicks")], "2026-10-10", dag="clicks_dag"),
              *run(job("spark", "t1_build", version="v7"), [(S3, "raw/clicks")],
                   [("warehouse", "t1")], "2026-10-10 02:00")]
    per_event(events, tmp_path / "openlineage")
    return tmp_path / "lake", tmp_path / "openlineage"


@pytest.mark.parametrize("backend", ["parquet", "sqlite"])
def test_the_telemetry_reader_serves_merged_lineage(ol_lake, backend, tmp_path):
    lake, events = ol_lake
    with contextlib.ExitStack() as stack:
        where = {"lake": str(lake)} if backend == "parquet" else {
            "sql_url": stack.enter_context(sql_url_copy(ParquetLake(str(lake)), backend, tmp_path))}
        reader = TelemetrySource(**where, openlineage=str(events),
                                 openlineage_lake_namespaces=["warehouse"]).reader()
        _reads_merged_lineage(reader, lake)
        assert isinstance(reader, ParquetLake if backend == "parquet" else SqlLake)


def _reads_merged_lineage(reader, lake):
    nodes = reader.read("lineage_nodes")
    assert set(nodes["node_id"]) == {*lineage_tables()["lineage_nodes"]["node_id"], CLICKS,
                                     f"{KAFKA}/clicks"}
    assert nodes.set_index("node_id").loc["t1", "pipeline_id"] == "p_t1"   # the lake's row
    edges = reader.read("lineage_edges", equals={"downstream_id": "t1"})
    assert set(edges["upstream_id"]) == {"s1", "s2", CLICKS}
    changes = reader.read("lineage_changes", isin={"node_id": ["t1", "s3"]},
                          time_range=TimeRange.of("2026-10-01"))
    assert list(changes["node_id"]) == ["s3"]        # the lake's (one run: no code change yet)
    assert reader.read("lineage_node_stats", equals={"node_id": CLICKS})["value"].notna().all()
    assert reader.read("model_features").equals(ParquetLake(str(lake)).read("model_features"))


def test_a_pipeline_known_only_to_openlineage_is_blamed_and_paused(ol_lake, monkeypatch):
    from hawkeye_dagster.sensors.feature_alerts import lineage_graph_for
    from hawkeye_dagster.triage.tree import run_triage

    lake, events = ol_lake
    monkeypatch.setenv("HAWKEYE_OPENLINEAGE", str(events))
    monkeypatch.setenv("HAWKEYE_OPENLINEAGE_LAKE_NAMESPACES", "warehouse, other")
    telemetry = TelemetrySource(lake=str(lake))
    reader = telemetry.reader()
    graph = lineage_from_reader(reader)
    assert CLICKS in set(graph.predecessors("t1"))
    assert set(lineage_graph_for(telemetry).nodes) == set(graph.nodes)   # the alert sensor's

    onset = utc(ONSET) + pd.Timedelta(hours=1)
    analysis = upstream_from_reader(reader, graph, {"f1": onset, "f2": onset})
    top = analysis.candidates.iloc[0]
    assert (top["kind"], top["id"]) == ("lineage_node", CLICKS) and top["confidence"] > 0.8
    plan = plan_pause(graph, CLICKS, ["f1", "f2"], incident="i1", confidence=top["confidence"])
    first = plan.pipelines.iloc[0]
    assert (first["pipeline_id"], first["orchestrator"], first["target"]) == (
        "airflow-prod/clicks_dag.load", "airflow", "clicks_dag")

    report = run_triage(reader, {"kind": "feature_alert", "features": {
        "f1": onset.isoformat(), "f2": onset.isoformat()}},
        TimeRange.of("2026-10-08", "2026-10-15"))
    assert report["verdict"] == "root_cause_found"
    assert report["root_causes"][0]["id"] == CLICKS
    assert {"action": "pause_pipeline",
            "pipeline_id": "airflow-prod/clicks_dag.load"} in report["mitigations"]
