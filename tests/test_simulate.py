"""The simulated world: contract-exact lakes whose telemetry really carries the incidents.

Everything is checked with pyarrow directly, independently of the project's
lake reader, so a reader bug cannot hide a simulator bug (or the reverse).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import networkx as nx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hawkeye_dagster.analysis.program_batches import run_program
from hawkeye_dagster.contract import CONTRACT_VERSION, TABLES
from hawkeye_dagster.simulate import SCALES, SCENARIOS, simulate
from hawkeye_dagster.simulate.world import build_world
from hawkeye_dagster.lake.conform import type_problem

HOUR = pd.Timedelta("1h")


def read(lake: Path, table: str) -> pd.DataFrame:
    """A whole table; partitioned ones file by file (their schemas differ between models)."""
    keys = TABLES[table].partition_keys
    parts = read_partitions(lake, table)
    return pd.concat([frame.assign(**dict(zip(keys, values))) for values, frame in parts.items()],
                     ignore_index=True)


def read_partitions(lake: Path, table: str) -> dict[tuple[str, ...], pd.DataFrame]:
    """A table's rows by the values of its Hive partition keys (``()`` for an unpartitioned
    table), read with plain pyarrow file by file (at any depth, in any of the encodings the
    simulator draws) and brought to one canonical encoding."""
    keys = TABLES[table].partition_keys
    frames: dict[tuple[str, ...], list[pd.DataFrame]] = {}
    for path in sorted((lake / table).rglob("*.parquet")):
        steps = [step.split("=", 1) for step in path.relative_to(lake / table).parts[:-1]]
        partition = {step[0]: unquote(step[1]) for step in steps if len(step) == 2}
        frame = _canonical(pq.read_table(path)).drop(columns=list(keys), errors="ignore")
        frames.setdefault(tuple(partition[k] for k in keys), []).append(frame)
    return {values: pd.concat(parts, ignore_index=True) for values, parts in frames.items()}


def _canonical(table: pa.Table) -> pd.DataFrame:
    """A file's columns as the canonical encoding: UTC timestamps, plain strings and lists."""
    columns = []
    for column in table.columns:
        kind = column.type
        if pa.types.is_timestamp(kind):
            column = column.cast(pa.timestamp("us", tz="UTC"))
        elif pa.types.is_dictionary(kind) or pa.types.is_large_string(kind):
            column = column.cast(pa.string())
        elif pa.types.is_large_list(kind):
            column = column.cast(pa.list_(kind.value_type))
        elif pa.types.is_integer(kind):
            column = column.cast(pa.int64())
        columns.append(column)
    return pa.table(columns, names=table.column_names).to_pandas()


def topline_shift(lake: Path, onset: pd.Timestamp, end: pd.Timestamp,
                  settle: pd.Timedelta = 12 * HOUR) -> pd.Series:
    """Mean week-over-week log change of each segment's volume metric in ``[onset + settle, end)``
    (the same hour a week earlier is the baseline, so daily and weekly seasonality cancel)."""
    top = read(lake, "topline_metrics")
    top = top[~top["metric"].str.endswith("_lower_is_better")]
    wide = np.log(top.pivot_table(index="ts", columns=["product", "segment"], values="value"))
    after = wide[(wide.index >= onset + settle) & (wide.index < end)]
    week_before = wide.loc[after.index - pd.Timedelta("7D")].to_numpy()
    return (after - week_before).mean()


def only(truth: dict) -> dict:
    (incident,) = truth["incidents"]
    return incident


def stat(lake: Path, node: str, name: str) -> pd.Series:
    stats = read(lake, "lineage_node_stats")
    rows = stats[(stats["node_id"] == node) & (stats["stat"] == name)]
    return rows.set_index("ts")["value"].sort_index()


# --- the lake follows the contract --------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lake_has_exactly_the_contract_tables_columns_and_types(simulated, scenario):
    """Every file holds the contract's columns (partition keys in their folders, maybe inside
    too) in a type the contract allows, and the feature tables exactly the model's features
    as float32; the encodings vary per file (see test_simulate_encoding)."""
    lake, truth = simulated(scenario)
    assert truth["scenario"] == scenario and truth["contract"] == CONTRACT_VERSION
    assert sorted(p.name for p in lake.iterdir()) == sorted(set(TABLES) | {"artifacts"})
    features = read(lake, "model_features")
    for name, spec in TABLES.items():
        for path in (lake / name).rglob("*.parquet"):
            schema = pq.read_schema(path)
            steps = [p.split("=", 1) for p in path.relative_to(lake / name).parts[:-1]]
            partition = {step[0]: unquote(step[1]) for step in steps if len(step) == 2}
            assert list(partition) == list(spec.partition_keys), path
            own = [c.name for c in spec.columns if c.name not in spec.partition_keys]
            assert set(own) <= set(schema.names), path
            for field in schema:
                assert type_problem(spec, field.name, field.type) is None, (path, field)
            extra = sorted(set(schema.names) - set(spec.column_names))
            if spec.feature_columns:
                model = partition.get("model_id") or partition["dataset_id"].removesuffix("_examples")
                expected = features[features["model_id"] == model]["feature_name"]
                assert extra == sorted(expected), path
                assert all(str(schema.field(f).type) == "float" for f in extra)
            else:
                assert not extra, path


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lake_contents_are_consistent(simulated, scenario):
    lake, _ = simulated(scenario)
    models, features = read(lake, "models"), read(lake, "model_features")
    assert set(models["task"]) == {"binary_classification", "regression"}
    segments = models.groupby("segment")["product"].nunique()
    assert segments.max() > 1, "a segment name repeats across products"
    assert models.groupby(["product", "segment"])["model_id"].nunique().max() > 1
    assert features.groupby("model_id").size().between(10, 25).all()
    names = set(features["feature_name"])
    assert any(not n.isascii() for n in names) and any('"' in n or "'" in n for n in names)
    assert any(" " in n for n in names) and any("." in n for n in names)
    assert not any("/" in n for n in names)
    positions = features.groupby("model_id")["position"].agg(lambda p: sorted(p) == list(range(len(p))))
    assert positions.all()

    nodes, edges = read(lake, "lineage_nodes"), read(lake, "lineage_edges")
    graph = nx.DiGraph(list(zip(edges["upstream_id"], edges["downstream_id"])))
    assert nx.is_directed_acyclic_graph(graph) and set(graph) <= set(nodes["node_id"])
    assert set(read(lake, "features")["lineage_node_id"]) <= set(nodes["node_id"])
    assert set(read(lake, "pipelines")["orchestrator"]) == {"dagster", "airflow", "external"}
    assert max(graph.out_degree(n) for n in graph if n.startswith("raw.")) > 1

    serving = read_partitions(lake, "serving_samples")
    for (model, date), frame in serving.items():
        assert (frame["ts"].dt.strftime("%Y-%m-%d") == date).all()
        assert frame["request_id"].is_unique
    all_requests = pd.concat([f.assign(model_id=m) for (m, _), f in serving.items()])
    assert not all_requests.duplicated(["model_id", "request_id"]).any()
    last = all_requests["ts"].max()
    assert all_requests[all_requests["ts"] > last - 2 * HOUR]["label"].isna().mean() > 0.5
    assert all_requests[all_requests["ts"] < last - 24 * HOUR]["label"].notna().all()

    experiments = read(lake, "experiments")
    for (model, segment), arms in experiments.groupby(["model_id", "segment"]):
        fractions = arms.pivot_table(index="ts", columns="experiment_id",
                                     values="traffic_fraction", aggfunc="last").ffill().fillna(0.0)
        assert (fractions.sum(axis=1) <= 1.0 + 1e-9).all(), (model, segment)
    snapshots = read(lake, "snapshots")
    assert all((lake / a).is_file() for a in snapshots["artifact"])
    runs = read(lake, "training_runs")
    training = read_partitions(lake, "training_data")
    for _, run in runs.iterrows():
        assert all((run["dataset_id"], p) in training for p in run["partitions"])
    assert set(snapshots["training_run_id"]) <= set(runs["training_run_id"])


@pytest.mark.parametrize("scenario", ["nan_snapshot", "exploding_training"])
def test_artifacts_reproduce_the_logged_predictions(simulated, scenario):
    lake, _ = simulated(scenario)
    features = read(lake, "model_features").sort_values("position")
    serving = read(lake, "serving_samples")
    names_of_model = {}
    for _, snap in read(lake, "snapshots").iterrows():
        program = torch.export.load(lake / snap["artifact"])
        columns = list(features[features["model_id"] == snap["model_id"]]["feature_name"])
        names_of_model.setdefault(snap["model_id"], set()).add(tuple(program.state_dict))
        rows = serving[serving["snapshot_id"] == snap["snapshot_id"]]
        if rows.empty:
            continue
        x = torch.from_numpy(rows[columns].to_numpy(np.float32, copy=True))
        module = program.module()
        with torch.no_grad():  # bounded batch dimensions (varied encodings) run in chunks
            out = run_program(module, x).reshape(-1).double().numpy()
            single = run_program(module, x[:1]).reshape(-1).double().numpy()
        np.testing.assert_allclose(out, rows["prediction"], rtol=1e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(single, out[:1], rtol=1e-5, equal_nan=True)
    assert all(len(names) == 1 for names in names_of_model.values()), "stable parameter names"


def test_truth_lives_beside_the_lake_not_inside(simulated):
    lake, truth = simulated("upstream_corruption")
    beside = lake.parent / "lake.truth.json"
    assert json.loads(beside.read_text()) == truth
    assert not [p for p in lake.rglob("*") if p.suffix == ".json" or "truth" in p.name]
    assert not [p for p in lake.parent.iterdir() if p.name.startswith(".lake")], "no temp left"


def test_same_seed_same_lake_and_truth(simulated, tmp_path):
    lake, truth = simulated("traffic_ramp")
    again = simulate(tmp_path / "lake", scenario="traffic_ramp", seed=0, scale="small")
    assert again == truth
    for table in TABLES:
        pd.testing.assert_frame_equal(read(lake, table), read(tmp_path / "lake", table))
    units = [build_world(SCALES["small"], np.random.default_rng(seed)).feature_array("scale")
             for seed in (0, 1)]
    assert not np.array_equal(*units), "another seed, another world"


def test_refuses_bad_arguments_and_existing_lakes(tmp_path):
    with pytest.raises(ValueError, match="scenario"):
        simulate(tmp_path / "a", scenario="nope")
    with pytest.raises(ValueError, match="scale"):
        simulate(tmp_path / "a", scale="huge")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError):
        simulate(tmp_path / "full", scenario="clean")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


# --- the incidents are really in the telemetry ----------------------------------------------

def test_truth_entries_are_complete_and_name_things_in_the_lake(simulated):
    lake, truth = simulated("demo")
    assert len(truth["incidents"]) >= 4
    assert len({i["name"] for i in truth["incidents"]}) == len(truth["incidents"])
    snapshots = set(read(lake, "snapshots")["snapshot_id"])
    nodes = set(read(lake, "lineage_nodes")["node_id"])
    experiments = set(read(lake, "experiments")["experiment_id"])
    for incident in truth["incidents"]:
        assert set(incident) >= {"name", "entry", "window", "onset", "verdict", "root_cause",
                                 "suspects", "mitigation", "details"}
        window = incident["window"]
        assert window["start"] < incident["onset"] < window["end"]
        root = incident["root_cause"]
        universe = {"lineage_node": nodes, "lineage_change": nodes, "snapshot": snapshots,
                    "traffic": experiments}.get(root["kind"])
        if universe is not None:
            assert root["id"] in universe
        assert set(incident["suspects"]["snapshots"]) <= snapshots
        assert set(incident["suspects"]["lineage_nodes"]) <= nodes


def shift_z(lake: Path, node: str, name: str, onset: pd.Timestamp) -> float:
    """How far a node's hourly stat moved after ``onset``, in standard deviations of its hours before."""
    series = stat(lake, node, name)
    before, after = series[series.index < onset], series[series.index >= onset + HOUR]
    return abs(after.mean() - before.mean()) / max(before.std(), 1e-9)


@pytest.mark.parametrize("seed", [0, 2])  # zeros at one source, nulls at another
def test_upstream_corruption_breaks_the_source_and_what_it_feeds(simulated, seed):
    lake, truth = simulated("upstream_corruption", seed)
    incident = only(truth)
    source, onset = incident["root_cause"]["id"], pd.Timestamp(incident["onset"])
    nulls = incident["details"]["corruption"] == "nulls"
    stat_names = ("null_fraction",) if nulls else ("mean", "std")  # zeros move values, not nulls

    def moved(node):
        return max(shift_z(lake, node, name, onset) for name in stat_names)

    edges = read(lake, "lineage_edges")
    graph = nx.DiGraph(list(zip(edges["upstream_id"], edges["downstream_id"])))
    for node in [source, *graph.successors(source)]:
        assert moved(node) > 5, node
    if nulls:
        fraction = stat(lake, source, "null_fraction")
        assert fraction[fraction.index < onset].mean() < 0.05
        assert fraction[fraction.index > onset + HOUR].mean() > 0.3
    untouched = [n for n in graph if n.startswith("raw.") and not nx.has_path(graph, source, n)
                 and not nx.has_path(graph, n, source)]
    assert all(moved(n) < 4 for n in untouched)
    assert incident["suspects"]["lineage_nodes"][0] == source
    nodes = read(lake, "lineage_nodes").set_index("node_id")
    assert incident["mitigation"] == {"action": "pause_pipeline",
                                      "pipeline_id": nodes.loc[source, "pipeline_id"]}
    entry = incident["entry"]
    shift = topline_shift(lake, onset, pd.Timestamp(incident["window"]["end"]))
    assert shift[(entry["product"], entry["segment"])] < -0.05


def test_transform_change_moves_only_the_transform_and_below(simulated):
    lake, truth = simulated("transform_change")
    incident = only(truth)
    node, onset = incident["root_cause"]["id"], pd.Timestamp(incident["onset"])
    changes = read(lake, "lineage_changes")
    change = changes[(changes["node_id"] == node) & (changes["ts"] == onset)]
    assert list(change["version"]) == [incident["root_cause"]["version"]]
    edges = read(lake, "lineage_edges")
    graph = nx.DiGraph(list(zip(edges["upstream_id"], edges["downstream_id"])))

    def jump(n):
        """How much the node's mean or spread moved at the onset (a ratio >= 1)."""
        ratios = []
        for name in ("mean", "std"):
            series = stat(lake, n, name)
            ratio = abs(series[series.index >= onset + HOUR].mean() / series[series.index < onset].mean())
            ratios.append(max(ratio, 1 / ratio))
        return max(ratios)

    assert jump(node) > 10
    assert all(jump(n) > 5 for n in graph.successors(node))
    assert all(jump(n) < 1.25 for n in graph.predecessors(node))
    entry = incident["entry"]
    shift = topline_shift(lake, onset, pd.Timestamp(incident["window"]["end"]))
    assert shift[(entry["product"], entry["segment"])] < -0.05


def test_bad_training_partition_has_inverted_labels_and_its_snapshot_hurts(simulated):
    lake, truth = simulated("bad_training_partition")
    incident = only(truth)
    dataset, bad = incident["root_cause"]["id"].split("/")
    training = read_partitions(lake, "training_data")
    label_means = {p: f["label"].mean() for (d, p), f in training.items() if d == dataset}
    others = [m for p, m in label_means.items() if p != bad]
    assert label_means[bad] > max(others) + 0.2
    snapshot = incident["suspects"]["snapshots"][0]
    runs = read(lake, "training_runs").set_index("training_run_id")
    run = read(lake, "snapshots").set_index("snapshot_id").loc[snapshot, "training_run_id"]
    assert bad in list(runs.loc[run, "partitions"])
    entry = incident["entry"]
    shift = topline_shift(lake, pd.Timestamp(incident["onset"]), pd.Timestamp(incident["window"]["end"]))
    assert shift[(entry["product"], entry["segment"])] < -0.05


def test_exploding_training_diverges_and_the_rolled_out_snapshot_hurts(simulated):
    lake, truth = simulated("exploding_training")
    incident = only(truth)
    snapshot = incident["root_cause"]["id"]
    run = read(lake, "snapshots").set_index("snapshot_id").loc[snapshot, "training_run_id"]
    metrics = read(lake, "training_metrics")
    peak = metrics.groupby("training_run_id")["loss"].max() / metrics[metrics["step"] < 20].groupby(
        "training_run_id")["loss"].median()
    assert peak[run] > 10 and (peak.drop(run) < 3).all()
    assert incident["details"]["exploding_step"] is not None
    experiments = read(lake, "experiments")
    assert experiments[experiments["snapshot_id"] == snapshot]["traffic_fraction"].max() == 1.0
    entry = incident["entry"]
    shift = topline_shift(lake, pd.Timestamp(incident["onset"]), pd.Timestamp(incident["window"]["end"]))
    assert shift[(entry["product"], entry["segment"])] < -0.1


def test_nan_snapshot_emits_nan_below_a_threshold_of_one_feature(simulated):
    lake, truth = simulated("nan_snapshot")
    incident = only(truth)
    snapshot, feature = incident["root_cause"]["id"], incident["details"]["nan_feature"]
    assert incident["entry"] == {"kind": "snapshot", "snapshot": snapshot}
    serving = read(lake, "serving_samples")
    bad = serving[serving["snapshot_id"] == snapshot]
    nan = bad["prediction"].isna()
    assert 0.02 < nan.mean() < 0.5
    assert serving[serving["snapshot_id"] != snapshot]["prediction"].notna().all()
    assert bad[nan][feature].max() <= bad[~nan][feature].min()
    path = read(lake, "snapshots").set_index("snapshot_id").loc[snapshot, "artifact"]
    graph = torch.export.load(lake / path).graph
    assert incident["details"]["graph_node"] in {n.name for n in graph.nodes}
    assert incident["mitigation"]["action"] == "add_guard"


def test_traffic_ramp_moves_the_top_line_with_the_arm_traffic(simulated):
    lake, truth = simulated("traffic_ramp")
    incident = only(truth)
    experiment, onset = incident["root_cause"]["id"], pd.Timestamp(incident["onset"])
    arms = read(lake, "experiments")
    arm = arms[arms["experiment_id"] == experiment].sort_values("ts")
    assert arm["traffic_fraction"].iloc[0] <= 0.05 and arm["traffic_fraction"].max() >= 0.5
    assert arm[arm["ts"] < onset]["traffic_fraction"].max() <= 0.05
    serving = read(lake, "serving_samples")
    assert serving[serving["snapshot_id"] == arm["snapshot_id"].iloc[0]]["prediction"].notna().all()
    entry = incident["entry"]
    shift = topline_shift(lake, onset, pd.Timestamp(incident["window"]["end"]))
    assert shift[(entry["product"], entry["segment"])] < -0.05


def test_feature_alert_fires_on_a_drifting_source_before_the_top_line_moves(simulated):
    lake, truth = simulated("feature_alert_early")
    incident = only(truth)
    entry, source, onset = incident["entry"], incident["root_cause"]["id"], pd.Timestamp(incident["onset"])
    alerts = read(lake, "feature_alerts")
    fired = alerts[(alerts["feature_name"] == entry["feature"])
                   & (alerts["ts"] == pd.Timestamp(entry["ts"]))]
    assert list(fired["severity"]) == ["warning"]
    mean = stat(lake, source, "mean")
    spread = mean[mean.index < onset].std()
    alert_ts = pd.Timestamp(entry["ts"])
    assert abs(mean[(mean.index >= alert_ts - 2 * HOUR) & (mean.index < alert_ts)].mean()
               - mean[mean.index < onset].mean()) > 2 * spread
    window_end = pd.Timestamp(incident["window"]["end"])
    assert onset < alert_ts < window_end
    assert topline_shift(lake, onset, window_end, settle=pd.Timedelta(0)).abs().max() < 0.03


def test_clean_world_has_no_incident_and_no_comparable_drop(simulated):
    lake, truth = simulated("clean")
    assert truth["incidents"] and all(i["verdict"] == "no_issue" for i in truth["incidents"])
    assert all(i["root_cause"] is None for i in truth["incidents"])
    end = pd.Timestamp(truth["end"])
    for days_back in (1, 2, 3):
        onset = end - pd.Timedelta(f"{days_back}D")
        assert topline_shift(lake, onset, end).min() > -0.04
    assert read(lake, "serving_samples")["prediction"].notna().all()
    assert set(read(lake, "feature_alerts")["severity"]) == {"info"}
