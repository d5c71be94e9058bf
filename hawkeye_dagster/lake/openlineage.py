"""OpenLineage events as the contract's lineage tables, beside the lake's own (I/O, no Dagster).

Airflow, Spark, dbt, Flink and most warehouses emit OpenLineage; this reads what the official
client's ``FileTransport`` writes (the full guide is ``docs/openlineage.md``).

Sources. A path to a file or a folder. A folder is read recursively: every ``*.json``,
``*.jsonl`` and ``*.ndjson`` file in name order (``FileTransport`` with ``append: false``
writes one file per event, named by time). A file holds JSON lines (``append: true``), or JSON
documents one after another (``debug_mode`` pretty-prints them); each line or document is an
event, a JSON array of events, or an export ``{"events": [...]}``. Events are RunEvents and
spec 2's JobEvents (a job's lineage without a run) and DatasetEvents (a dataset's facets).
Anything else names the file and line (:class:`~hawkeye_dagster.errors.ContractError`).

Identity. A dataset is its namespace and name, a job its namespace and name (OpenLineage's
naming: ``postgres://db:5432`` + ``analytics.public.orders``). A job is the pipeline
``namespace/name``: orchestrator ``airflow`` with its DAG as target when Airflow emitted it
(the parent run's job, as the Airflow provider names it), else ``external`` with the job name.
:class:`DatasetMapping` says which node a dataset is: by default the node ``namespace/name``,
which never collides with a lake node (lake ids hold no ``/``); a dataset of a configured
*lake namespace* whose name is a lake node id is that lake node, which is how the events'
lineage joins the lake's; ``aliases`` name any other correspondence outright.

Lineage. Edges come from runs: every input x every output of the START, RUNNING and COMPLETE
events of one ``runId`` (a JobEvent is a run of its own). A run with a FAIL or ABORT event
gives no lineage, only a count (``openlineage_runs``: runs per pipeline and outcome); OTHER
events carry metadata only. A dataset is a ``table`` produced by the job of its latest run
that wrote it, a ``source`` when no run wrote it. A job reading and writing one dataset is a
self-loop: kept in ``lineage_self_loops`` (``node_id, pipeline_id``), not an edge, so it is
no cycle. Column lineage (the ``columnLineage`` facet) gives ``lineage_column_edges``
(``upstream_id, upstream_column, downstream_id, downstream_column``): which input columns
feed which output column, narrower than the dataset edge. Changes become ``lineage_changes``:
``code`` at a job's output nodes when its code (``sourceCodeLocation`` version, else url,
plus a hash of its ``sql`` and ``sourceCode`` facets) differs from its previous run's, at the
first run with the new code; ``schema`` at a dataset when its ``schema`` facet's fields change.

Reading streams: one ``json.loads`` per line, the few fields needed picked, every facet
dropped, so time is that of JSON decoding and memory follows the graph (datasets, jobs, runs),
not the events (a whole-document file is read whole). Parsed events are cached by the files'
sizes and modification times.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from hawkeye_dagster.errors import ContractError

#: the contract tables that OpenLineage adds rows to
SUFFIXES = (".json", ".jsonl", ".ndjson")
#: a run's outcome by the strongest event type seen: a FAIL or ABORT anywhere makes it failed
_OUTCOMES = {"START": (1, "RUNNING"), "RUNNING": (1, "RUNNING"), "COMPLETE": (2, "COMPLETE"),
             "STATIC": (2, "STATIC"), "FAIL": (3, "FAIL"), "ABORT": (3, "ABORT")}
#: outcomes whose inputs and outputs are lineage (``STATIC``: a JobEvent)
LINEAGE_OUTCOMES = ("RUNNING", "COMPLETE", "STATIC")
_HASHED_FACETS = (("sql", "query", "sql"), ("sourceCode", "sourceCode", "source"))
_SPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class DatasetMapping:
    """Which lineage node an OpenLineage dataset is.

    ``aliases`` (``"namespace/name"`` -> node id) first; then a dataset of one of
    ``lake_namespaces`` whose name is a lake node id is that node; every other dataset is
    the node ``namespace/name``.
    """

    lake_namespaces: Sequence[str] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)

    def node_ids(self, namespaces: pd.Series, names: pd.Series,
                 lake_node_ids: Iterable[str]) -> pd.Series:
        qualified = namespaces + "/" + names
        bare = namespaces.isin(list(self.lake_namespaces)) & names.isin(list(lake_node_ids))
        return qualified.map(dict(self.aliases)).fillna(names.where(bare, qualified))


@dataclass(frozen=True)
class OpenLineageEvents:
    """The lineage in a set of events, in OpenLineage's identities (before any mapping).

    Rows of ``datasets`` (``namespace, name``), ``jobs`` (``pipeline_id, orchestrator,
    target``) and ``runs`` (``job, outcome, first, last, version``) are their codes; ``reads`` and
    ``writes`` are ``run, dataset`` pairs, ``columns`` ``run, upstream, upstream_column,
    downstream, downstream_column``, ``schemas`` each distinct ``dataset, fields`` with the
    ``ts`` it was first seen, ``declared`` the datasets of DatasetEvents.
    """

    datasets: pd.DataFrame
    jobs: pd.DataFrame
    runs: pd.DataFrame
    reads: pd.DataFrame
    writes: pd.DataFrame
    columns: pd.DataFrame
    schemas: pd.DataFrame
    declared: np.ndarray

    def tables(self, mapping: DatasetMapping | None = None,
               lake_node_ids: Iterable[str] = ()) -> dict[str, pd.DataFrame]:
        """Frames keyed by table name: the contract's ``lineage_nodes``, ``lineage_edges``,
        ``lineage_changes``, ``pipelines``, and ``lineage_column_edges``,
        ``lineage_self_loops``, ``openlineage_runs`` (see the module)."""
        node = (mapping or DatasetMapping()).node_ids(
            self.datasets["namespace"], self.datasets["name"], lake_node_ids).to_numpy(object)
        job = self.runs["job"].to_numpy()
        pipeline = self.jobs["pipeline_id"].to_numpy(object)
        lineage = self.runs["outcome"].isin(LINEAGE_OUTCOMES).to_numpy()
        reads, writes, columns = (t[lineage[t["run"].to_numpy()]]
                                  for t in (self.reads, self.writes, self.columns))

        flows = reads.merge(writes, on="run", suffixes=("_up", "_down"))
        flows = pd.DataFrame({"upstream_id": node[flows["dataset_up"]],
                              "downstream_id": node[flows["dataset_down"]],
                              "pipeline_id": pipeline[job[flows["run"]]]}).drop_duplicates()
        loop = flows["upstream_id"] == flows["downstream_id"]
        edges = flows.loc[~loop, ["upstream_id", "downstream_id"]].drop_duplicates(
            ignore_index=True)
        self_loops = flows.loc[loop, ["upstream_id", "pipeline_id"]].rename(
            columns={"upstream_id": "node_id"}).reset_index(drop=True)

        written = pd.DataFrame({"node_id": node[writes["dataset"]], "job": job[writes["run"]],
                                "last": self.runs["last"].to_numpy()[writes["run"]]})
        latest = written.sort_values("last", kind="stable").drop_duplicates("node_id", keep="last")
        producer = pd.Series(pipeline[latest["job"]], index=latest["node_id"].to_numpy())
        nodes = pd.DataFrame({"node_id": pd.unique(np.concatenate([
            node[reads["dataset"]], node[writes["dataset"]], node[self.declared]]))})
        nodes["pipeline_id"] = nodes["node_id"].map(producer)
        nodes["kind"] = np.where(nodes["pipeline_id"].isna(), "source", "table")

        outputs = written[["job", "node_id"]].drop_duplicates()
        column_edges = pd.DataFrame({
            "upstream_id": node[columns["upstream"]], "upstream_column": columns["upstream_column"],
            "downstream_id": node[columns["downstream"]],
            "downstream_column": columns["downstream_column"]}).drop_duplicates(ignore_index=True)
        outcomes = self.runs.assign(pipeline_id=pipeline[job]).groupby(
            ["pipeline_id", "outcome"]).size().rename("runs").reset_index()
        return {
            "lineage_nodes": nodes[["node_id", "kind", "pipeline_id"]],
            "lineage_edges": edges,
            "lineage_changes": pd.concat([self._code_changes(outputs, pipeline),
                                          self._schema_changes(node, nodes["node_id"])],
                                         ignore_index=True),
            "pipelines": self.jobs.iloc[np.unique(job[lineage])].reset_index(drop=True),
            "lineage_column_edges": column_edges,
            "lineage_self_loops": self_loops,
            "openlineage_runs": outcomes,
        }

    def _code_changes(self, outputs: pd.DataFrame, pipeline: np.ndarray) -> pd.DataFrame:
        """A run whose code differs from the job's previous run's: a change at the job's outputs."""
        runs = self.runs.dropna(subset=["version"]).sort_values("first", kind="stable")
        by_job = runs.groupby("job")
        moved = runs[runs["version"].ne(by_job["version"].shift()) & by_job.cumcount().gt(0)]
        rows = moved.merge(outputs, on="job")
        return pd.DataFrame({
            "ts": rows["first"], "node_id": rows["node_id"], "change_type": "code",
            "version": rows["version"],
            "description": "OpenLineage job " + pd.Series(pipeline[rows["job"]], dtype=object)
                           + " runs code " + rows["version"]})

    def _schema_changes(self, node: np.ndarray, nodes: pd.Series) -> pd.DataFrame:
        """A dataset's schema facet with other fields than the one before: a ``schema`` change."""
        schemas = self.schemas[pd.Series(node[self.schemas["dataset"]]).isin(nodes).to_numpy()]
        schemas = schemas.sort_values("ts", kind="stable")
        by_dataset = schemas.groupby("dataset")
        before = by_dataset["fields"].shift()
        moved = by_dataset.cumcount().gt(0).to_numpy()
        rows, before = schemas[moved], before[moved]
        return pd.DataFrame({
            "ts": rows["ts"], "node_id": node[rows["dataset"]], "change_type": "schema",
            "version": [_digest(repr(f)) for f in rows["fields"]],
            "description": [_schema_diff(old, new) for old, new in zip(before, rows["fields"])]})


def _schema_diff(old: tuple, new: tuple) -> str:
    before, after = dict(old), dict(new)
    parts = [f"{label} {', '.join(names)}" for label, names in (
        ("added", [n for n in after if n not in before]),
        ("removed", [n for n in before if n not in after]),
        ("retyped", [n for n in after if n in before and before[n] != after[n]])) if names]
    return "OpenLineage schema: " + ("; ".join(parts) or "fields reordered")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class _Run:
    """What one run (or JobEvent) contributes, as dataset codes."""

    __slots__ = ("job", "rank", "outcome", "first", "last", "version", "reads", "writes",
                 "columns")

    def __init__(self, job: int, ts: datetime):
        self.job, self.rank, self.outcome, self.first, self.last = job, 0, "OTHER", ts, ts
        self.version: str | None = None
        self.reads: set[int] = set()
        self.writes: set[int] = set()
        self.columns: set[int] = set()  # column-edge sets (:attr:`_Collector.column_sets`)


class _Collector:
    """Events in, :class:`OpenLineageEvents` out, holding only codes and a few strings."""

    def __init__(self):
        self.datasets: dict[tuple[str, str], int] = {}
        self.jobs: dict[tuple[str, str], int] = {}
        self.latest: list[tuple[datetime, str, str]] = []  # per job: (ts, orchestrator, target)
        self.runs: dict[object, _Run] = {}
        self.schemas: dict[tuple[int, tuple], datetime] = {}
        self.column_edges: dict[tuple[int, str, int, str], int] = {}
        self.column_sets: dict[frozenset[int], int] = {}  # an output's column edges, as codes
        self.declared: set[int] = set()
        self.count = 0
        self._last: dict[tuple[str, int], tuple[object, object]] = {}

    def add(self, event: dict) -> None:
        ts = datetime.fromisoformat(event["eventTime"])
        ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        self.count += 1
        if "dataset" in event and "job" not in event:              # DatasetEvent
            self.declared.add(self._dataset(event["dataset"], ts))
            return
        job, run = event["job"], event.get("run")
        code = self._job(job, run, event.get("producer"), ts)
        if run is None:                                             # JobEvent: a run of its own
            key, state = ("job-event", self.count), "STATIC"
        else:
            key, state = run["runId"], event.get("eventType")
        record = self.runs.get(key)
        if record is None:
            record = self.runs[key] = _Run(code, ts)
        record.first, record.last = min(record.first, ts), max(record.last, ts)
        rank, outcome = _OUTCOMES.get(state, (0, "OTHER"))
        if rank > record.rank:
            record.rank, record.outcome = rank, outcome
        if record.version is None:
            record.version = _code_version(job)
        if rank not in (1, 2):
            return
        record.reads.update(self._dataset(d, ts) for d in event.get("inputs") or ())
        for dataset in event.get("outputs") or ():
            written = self._dataset(dataset, ts)
            record.writes.add(written)
            lineage = ((dataset.get("facets") or {}).get("columnLineage") or {}).get("fields")
            if lineage:
                record.columns.add(self._unchanged(
                    "columns", written, lineage, lambda fields: self._column_set(written, fields)))

    def _column_set(self, written: int, fields: dict) -> int:
        """The code of the column edges into ``written`` that a ``columnLineage`` facet gives."""
        edges = frozenset(
            self.column_edges.setdefault(edge, len(self.column_edges))
            for edge in ((self._intern(source), source["field"], written, column)
                         for column, feeds in fields.items()
                         for source in feeds.get("inputFields") or ()))
        return self.column_sets.setdefault(edges, len(self.column_sets))

    def _unchanged(self, facet: str, code: int, raw, derive):
        """``derive(raw)``, reused while the dataset's facet is what it was last time (events
        repeat their facets run after run, and comparing is cheaper than deriving)."""
        last = self._last.get((facet, code))
        if last is None or last[0] != raw:
            last = self._last[facet, code] = (raw, derive(raw))
        return last[1]

    def _job(self, job: dict, run: dict | None, producer, ts: datetime) -> int:
        key = _identity(job)
        code = self.jobs.setdefault(key, len(self.jobs))
        if code < len(self.latest) and ts < self.latest[code][0]:
            return code
        facets = job.get("facets") or {}
        integration = str((facets.get("jobType") or {}).get("integration") or "")
        if integration.upper() == "AIRFLOW" or "airflow" in str(producer or "").lower():
            parent = ((run or {}).get("facets") or {}).get("parent") or {}
            latest = (ts, "airflow", (parent.get("job") or {}).get("name") or key[1])
        else:
            latest = (ts, "external", key[1])
        if code < len(self.latest):
            self.latest[code] = latest
        else:
            self.latest.append(latest)
        return code

    def _intern(self, dataset: dict) -> int:
        """A dataset's code (a new one for a dataset not seen before)."""
        code = self.datasets.get((dataset["namespace"], dataset["name"]))
        return self.datasets.setdefault(_identity(dataset), len(self.datasets)) \
            if code is None else code

    def _dataset(self, dataset: dict, ts: datetime) -> int:
        """:meth:`_intern`, noting when the dataset's schema facet was first seen."""
        code = self._intern(dataset)
        fields = ((dataset.get("facets") or {}).get("schema") or {}).get("fields")
        if fields:
            schema = (code, self._unchanged("schema", code, fields, lambda raw: tuple(
                (f["name"], f.get("type")) for f in raw)))
            seen = self.schemas.get(schema)
            if seen is None or ts < seen:
                self.schemas[schema] = ts
        return code

    def events(self) -> OpenLineageEvents:
        runs = list(self.runs.values())
        jobs = pd.DataFrame(list(self.jobs), columns=["namespace", "name"])
        latest = pd.DataFrame(self.latest, columns=["ts", "orchestrator", "target"])
        schemas = [(dataset, ts, fields) for (dataset, fields), ts in self.schemas.items()]

        def pairs(side: str, column: str) -> pd.DataFrame:
            sizes = [len(getattr(r, side)) for r in runs]
            return pd.DataFrame({column: np.fromiter(chain.from_iterable(
                getattr(r, side) for r in runs), dtype=int, count=sum(sizes)),
                "run": np.repeat(np.arange(len(runs)), sizes)})

        sets = list(self.column_sets)
        in_set = pd.DataFrame({"set": np.repeat(np.arange(len(sets)), [len(s) for s in sets]),
                               "edge": np.fromiter(chain.from_iterable(sets), dtype=int,
                                                   count=sum(map(len, sets)))})
        run_edges = pairs("columns", "set").merge(in_set, on="set")
        edges = pd.DataFrame(list(self.column_edges), columns=[
            "upstream", "upstream_column", "downstream", "downstream_column"]).astype(
            {"upstream": int, "downstream": int})

        return OpenLineageEvents(
            datasets=pd.DataFrame(list(self.datasets), columns=["namespace", "name"]),
            jobs=pd.DataFrame({"pipeline_id": jobs["namespace"] + "/" + jobs["name"],
                               "orchestrator": latest["orchestrator"], "target": latest["target"]}),
            runs=pd.DataFrame({"job": np.array([r.job for r in runs], dtype=int),
                               "outcome": [r.outcome for r in runs],
                               "first": _utc([r.first for r in runs]),
                               "last": _utc([r.last for r in runs]),
                               "version": pd.Series([r.version for r in runs], dtype=object)}),
            reads=pairs("reads", "dataset"), writes=pairs("writes", "dataset"),
            columns=edges.iloc[run_edges["edge"]].reset_index(drop=True).assign(
                run=run_edges["run"].to_numpy()),
            schemas=pd.DataFrame({"dataset": np.array([s[0] for s in schemas], dtype=int),
                                  "ts": _utc([s[1] for s in schemas]),
                                  "fields": pd.Series([s[2] for s in schemas], dtype=object)}),
            declared=np.fromiter(self.declared, dtype=int, count=len(self.declared)))


def _utc(instants: list[datetime]) -> pd.Series:
    return pd.Series(pd.to_datetime(instants, utc=True), dtype="datetime64[ns, UTC]")


def _identity(entity: dict) -> tuple[str, str]:
    """``(namespace, name)`` of a job or dataset; anything but two strings is not an event."""
    namespace, name = entity["namespace"], entity["name"]
    if not (isinstance(namespace, str) and isinstance(name, str)):
        raise TypeError("namespace and name must be strings")
    return namespace, name


def _code_version(job: dict) -> str | None:
    """What identifies the code a job ran: its source location's version (else url), and a
    hash of its SQL and source code where the events carry them."""
    facets = job.get("facets") or {}
    location = facets.get("sourceCodeLocation") or {}
    parts = [location.get("version") or location.get("url")]
    parts += [f"{label}:{_digest(text)}" for facet, key, label in _HASHED_FACETS
              if isinstance(text := (facets.get(facet) or {}).get(key), str)]
    return " ".join(p for p in parts if p) or None


# --- reading files ------------------------------------------------------------------------------

def parse_events(source: str | Path) -> OpenLineageEvents:
    """The lineage of the events at ``source`` (a file or a folder, see the module)."""
    path = Path(source)
    collector = _Collector()
    for file, line, event in _events(path):
        try:
            collector.add(event)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            why = f"no {err.args[0]!r}" if isinstance(err, KeyError) else str(err)
            raise ContractError(f"line {line}: not an OpenLineage event ({why})",
                                file=str(file)) from None
    if not collector.count:
        raise ContractError("no OpenLineage events", file=str(path))
    return collector.events()


def read_openlineage(source: str | Path, mapping: DatasetMapping | None = None,
                     lake_node_ids: Iterable[str] = ()) -> dict[str, pd.DataFrame]:
    """Lineage tables of the events at ``source``, datasets mapped to nodes by ``mapping``
    against the lake's node ids (see :meth:`OpenLineageEvents.tables`)."""
    return parse_events(source).tables(mapping, lake_node_ids)


def event_files(path: Path) -> list[Path]:
    """The event files at ``path``: itself, or the folder's, recursively, in name order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES
                      and not p.name.startswith(".") and p.is_file())
    if path.is_file():
        return [path]
    raise ContractError("OpenLineage events not found", file=str(path))


def _events(path: Path) -> Iterator[tuple[Path, int, object]]:
    """``(file, line, event)`` for every event, arrays and exports unpacked."""
    for file in event_files(path):
        for line, value in _documents(file):
            if isinstance(value, dict) and "events" in value and "eventTime" not in value:
                value = value["events"]
            for event in value if isinstance(value, list) else (value,):
                yield file, line, event


def _documents(file: Path) -> Iterator[tuple[int, object]]:
    """``(line, JSON value)`` of a file: JSON lines one line at a time; a file whose first line
    is no JSON value (pretty-printed documents) is decoded whole, document after document."""
    try:
        with file.open(encoding="utf-8") as stream:
            lines = False
            for number, text in enumerate(stream, 1):
                if text.isspace():
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as err:
                    if lines:
                        raise _not_json(file, number, err) from None
                    break
                lines = True
                yield number, value
            else:
                return
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ContractError(f"not UTF-8 text (byte {err.start})", file=str(file)) from None
    decoder, line, counted = json.JSONDecoder(), 1, 0
    at = _SPACE.match(text).end()
    while at < len(text):
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError as err:
            raise _not_json(file, err.lineno, err) from None
        line, counted = line + text.count("\n", counted, at), at
        yield line, value
        at = _SPACE.match(text, end).end()


def _not_json(file: Path, line: int, err: json.JSONDecodeError) -> ContractError:
    return ContractError(f"line {line}: not JSON ({err.msg} at column {err.colno})",
                         file=str(file))


@dataclass(frozen=True)
class OpenLineageSource:
    """Events at ``path`` (a file or folder) and how their datasets map to lake nodes."""

    path: str
    mapping: DatasetMapping = field(default_factory=DatasetMapping)

    def tables(self, lake_node_ids: Iterable[str] = ()) -> dict[str, pd.DataFrame]:
        """The events' lineage tables, parsed again only when a file changed (or came or went)."""
        files = event_files(Path(self.path))
        signature = tuple((str(f), (s := f.stat()).st_mtime_ns, s.st_size) for f in files)
        return _parsed(self.path, signature).tables(self.mapping, lake_node_ids)


@functools.lru_cache(maxsize=8)
def _parsed(path: str, signature: tuple) -> OpenLineageEvents:  # noqa: ARG001 (the cache key)
    return parse_events(path)
