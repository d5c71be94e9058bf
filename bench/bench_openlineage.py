"""OpenLineage parsing: 10,000 realistic events (about 120 MB of JSON lines, as Spark and Airflow
emit them: big run facets, schemas, column lineage, SQL) into lineage tables.

- ``openlineage_parse_10k``: :func:`~hawkeye_dagster.lake.openlineage.read_openlineage`
  (a ``json.loads`` per line, the needed fields picked, facets dropped) against the approach
  it replaced: ``json.loads`` of every line, ``pandas.json_normalize`` of the events (one
  column per facet key) and of their datasets, edges per job name. Both read the same file;
  peak memory is tracemalloc's, in separate untimed calls.
"""

from __future__ import annotations

import json
import tempfile
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from bench.timing import best_of
from hawkeye_dagster.lake.openlineage import read_openlineage

DATASET_NAMESPACES = ("postgres://db:5432", "postgres://replica:5432", "s3://lake",
                      "bigquery", "kafka://broker:9092", "hive://metastore:9083")
JOB_NAMESPACES = ("airflow-prod", "spark-etl", "dbt", "flink", "adhoc")
PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.54.0/integration/spark"
#: column names a warehouse reuses across tables, and the Spark properties jobs set
COLUMNS = [f"{w}_{i}" for w in ("user", "order", "amount", "ts", "country", "device", "score",
                                "session", "item", "price") for i in range(60)]
PROPERTIES = [f"spark.{area}.{i}" for area in ("sql", "executor", "driver", "hadoop", "app",
                                               "shuffle", "dynamicAllocation") for i in range(300)]
#: columns per table
WIDTH = 12


def _facet(**fields) -> dict:
    return {"_producer": PRODUCER, "_schemaURL": "https://openlineage.io/spec/facets/", **fields}


def _dataset(names, code: int, columns: list[str], lineage=None) -> dict:
    """A dataset as Spark reports it: schema, data source, symlinks (and column lineage)."""
    namespace, name = names[code]
    facets = {
        "schema": _facet(fields=[
            {"name": c, "type": "BIGINT" if c.startswith(("user", "order")) else "STRING"}
            for c in columns]),
        "dataSource": _facet(name=namespace, uri=namespace),
        "symlinks": _facet(identifiers=[{"namespace": "hive://metastore:9083",
                                         "name": name.replace("/", "."), "type": "TABLE"}]),
    }
    if lineage:
        facets["columnLineage"] = _facet(fields={c: {"inputFields": [
            {"namespace": names[i][0], "name": names[i][1], "field": f,
             "transformations": [{"type": "DIRECT", "subtype": "IDENTITY"}]}
            for i, f in lineage[c]]} for c in columns})
    return {"namespace": namespace, "name": name, "facets": facets}


def _event(state: str, ts: pd.Timestamp, run_id: str, job: dict, version: str, names,
           schemas) -> dict:
    out = job["outputs"][0]
    lineage = {c: [(i, schemas[i][k % WIDTH]) for k, i in enumerate(job["inputs"][:2])]
               for c in schemas[out]}
    plan = [{"class": "org.apache.spark.sql.catalyst.plans.logical.Project", "num-children": 1,
             "projectList": [[{"name": c, "dataType": "long", "exprId": k}]
                             for k, c in enumerate(schemas[out])]}]
    sql = ("SELECT " + ", ".join(schemas[out]) + " FROM "
           + " JOIN ".join(names[i][1] for i in job["inputs"]))
    return {
        "eventType": state, "eventTime": ts.isoformat(), "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": run_id, "facets": {
            "spark_properties": _facet(properties=job["properties"]),
            "processing_engine": _facet(version="3.5.1", name="spark"),
            "spark.logicalPlan": _facet(plan=plan)}},
        "job": {"namespace": job["namespace"], "name": job["name"], "facets": {
            "jobType": _facet(processingType="BATCH", integration="SPARK", jobType="SQL_JOB"),
            "sourceCodeLocation": _facet(type="git", url="https://git.example/etl",
                                         version=version),
            "sql": _facet(query=sql)}},
        "inputs": [_dataset(names, i, schemas[i]) for i in job["inputs"]],
        "outputs": [_dataset(names, o, schemas[o], lineage) for o in job["outputs"]],
    }


def write_events(path: Path, n_events: int, seed: int = 0) -> Path:
    """``n_events`` run events as JSON lines: per run a START and a COMPLETE (or FAIL, ABORT)
    of one of ``n_events / 40`` jobs over ``n_events / 5`` datasets; code versions move on
    every 1,000 runs."""
    rng = np.random.default_rng(seed)
    n_datasets, n_jobs = max(50, n_events // 5), max(20, n_events // 40)
    names = [(DATASET_NAMESPACES[i % len(DATASET_NAMESPACES)], f"schema_{i % 7}/table_{i}")
             for i in range(n_datasets)]
    schemas = [list(rng.choice(COLUMNS, WIDTH, replace=False)) for _ in range(n_datasets)]
    jobs = [{"namespace": JOB_NAMESPACES[j % len(JOB_NAMESPACES)], "name": f"job_{j}.task",
             "inputs": [int(i) for i in rng.choice(n_datasets, 3, replace=False)],
             "outputs": [int(rng.integers(n_datasets))],
             "properties": {p: f"value-{j}" for p in rng.choice(PROPERTIES, 40)}}
            for j in range(n_jobs)]
    start = pd.Timestamp("2026-10-01", tz="UTC")
    with path.open("w") as stream:
        for r in range(n_events // 2):
            job = jobs[int(rng.integers(n_jobs))]
            run_id = str(uuid.UUID(int=int(rng.integers(2**62))))
            end = str(rng.choice(["COMPLETE", "FAIL", "ABORT"], p=[0.9, 0.08, 0.02]))
            for state, minutes in (("START", r), (end, r + 5)):
                stream.write(json.dumps(_event(state, start + pd.Timedelta(minutes=minutes),
                                               run_id, job, f"v{r // 1000}", names, schemas))
                             + "\n")
    return path


def json_normalize_reference(path: Path) -> dict[str, pd.DataFrame]:
    """The approach this replaced (``pandas.json_normalize``; namespaces dropped, edges per job
    name), kept here only as the benchmark's reference."""
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    frame = pd.json_normalize(events, sep=".")
    for column in ("inputs", "outputs", "job.facets.sourceCodeLocation.version"):
        if column not in frame:
            frame[column] = None
    frame["inputs"] = frame["inputs"].map(lambda v: v if isinstance(v, list) else [])
    frame["outputs"] = frame["outputs"].map(lambda v: v if isinstance(v, list) else [])
    frame["pipeline_id"] = frame["job.name"]

    def datasets(side: str) -> pd.DataFrame:
        exploded = frame[["pipeline_id", side]].explode(side).dropna(subset=[side])
        names = pd.json_normalize(exploded[side].tolist())["name"]
        return pd.DataFrame({"pipeline_id": exploded["pipeline_id"].to_numpy(),
                             "node_id": names.str.replace("/", ".").to_numpy()})

    inputs, outputs = datasets("inputs"), datasets("outputs")
    edges = inputs.merge(outputs, on="pipeline_id").drop_duplicates(["node_id_x", "node_id_y"])
    nodes = pd.DataFrame({"node_id": pd.concat([inputs["node_id"], outputs["node_id"]]).unique()})
    return {"lineage_nodes": nodes, "lineage_edges": edges}


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_parse(n_events: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_events(Path(tmp) / "events.jsonl", n_events)
        size = path.stat().st_size
        project_s, tables = best_of(lambda: read_openlineage(path), repeat)
        project_peak = _peak(lambda: read_openlineage(path))
        reference_s, reference = best_of(lambda: json_normalize_reference(path), 1)
        reference_peak = _peak(lambda: json_normalize_reference(path))
    return {
        "name": f"openlineage_parse_{n_events // 1000}k",
        "project_s": project_s,
        "reference": "json.loads + pandas.json_normalize (the replaced parser)",
        "reference_s": reference_s, "ratio": reference_s / project_s,
        "params": {"events": n_events, "file_mb": round(size / 2**20, 1),
                   "nodes": len(tables["lineage_nodes"]), "edges": len(tables["lineage_edges"]),
                   "peak_mb": round(project_peak / 2**20, 1),
                   "reference_peak_mb": round(reference_peak / 2**20, 1),
                   "reference_nodes": len(reference["lineage_nodes"]),
                   "reference_edges": len(reference["lineage_edges"])},
    }


def run(quick: bool) -> list[dict]:
    return [bench_parse(1_000, 3) if quick else bench_parse(10_000, 3)]


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
