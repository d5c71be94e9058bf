"""Run a snapshot on recent inputs, find bad activations, and walk the graph to their cause.

Every node of the exported graph is executed with :class:`torch.fx.Interpreter`
and its output summarised (range, rows holding NaN, inf or extreme values).
The first bad nodes (bad, with no bad input) are the origins; walking the model
graph downstream tells whether the damage reaches the prediction, and re-running
the model with input columns clipped to (or replaced by) their baseline values
tells which input features cause it. The result names a guard to add: ``clip``
at a responsible input feature, or ``layernorm`` after a node when no input
explains the overflow. Non-finite weights are the snapshot's own fault: no guard
helps, and none is suggested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pandas as pd
import torch
import torch.fx

from hawkeye_dagster.analysis.program_batches import RowChunk, batch_range, row_chunks

#: an activation whose magnitude exceeds this is extreme (float16 overflows at 65504)
EXTREME_ABS = 1e6
#: inputs are clipped to these baseline quantiles when testing a feature
CLIP_QUANTILES = (0.001, 0.999)
#: at most this many bad rows are replayed per feature when attributing
MAX_REPLAY_ROWS = 64

NODE_COLUMNS = ("node", "op", "target", "batched", "shape", "min", "max", "nan_rows",
                "inf_rows", "extreme_rows", "nonfinite_values", "bad")
FEATURE_COLUMNS = ("feature", "position", "fixed_by_clip", "fixed_by_baseline", "responsible")


def model_graph(module: torch.fx.GraphModule) -> nx.DiGraph:
    """The fx graph as a networkx graph: one vertex per node name, data flowing along edges.

    Vertex attributes ``op`` and ``target`` are the fx node's.
    """
    graph = nx.DiGraph()
    for node in module.graph.nodes:
        graph.add_node(node.name, op=node.op, target=str(node.target))
        graph.add_edges_from((source.name, node.name) for source in node.all_input_nodes)
    return graph


def _is_batched(node: torch.fx.Node) -> bool:
    """Whether the node's output has the dynamic batch dimension first."""
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dim() > 0 and isinstance(val.shape[0], torch.SymInt)


class _Capture(torch.fx.Interpreter):
    """Runs the graph on each chunk of rows, summarising each node's output over all of them
    (one record per node, merged across chunks) and marking rows with bad values."""

    def __init__(self, module: torch.fx.GraphModule, rows: int, extreme_abs: float):
        super().__init__(module)
        self.extreme_abs = extreme_abs
        self.row_bad = torch.zeros(rows, dtype=torch.bool)
        self.records: dict[str, dict] = {}
        self.chunk = RowChunk(0, rows, rows)

    def run_chunk(self, inputs: torch.Tensor, chunk: RowChunk) -> None:
        """Run the graph on ``chunk``'s rows of ``inputs`` (padded rows are not recorded)."""
        self.chunk = chunk
        self.run(chunk.take(inputs))

    def run_node(self, node: torch.fx.Node):
        out = super().run_node(node)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and node.op != "output":
            self._record(node, out)
        return out

    def _record(self, node: torch.fx.Node, out: torch.Tensor) -> None:
        batched = _is_batched(node)
        chunk = self.chunk
        if batched and chunk.size != chunk.rows and out.shape[0] == chunk.size:
            out = out[:chunk.rows]  # drop the rows that pad the chunk
        flat = out.reshape(out.shape[0], -1) if batched else out.reshape(1, -1)
        if flat.numel() == 0:
            return
        lo, hi = torch.aminmax(flat)
        lo, hi = float(lo), float(hi)
        # weights and other batch-free values may be large; only activations can be extreme
        clean = np.isfinite(lo) and np.isfinite(hi) and (
            not batched or max(-lo, hi) <= self.extreme_abs)
        record = {"node": node.name, "op": node.op, "target": str(node.target),
                  "batched": batched, "shape": list(out.shape), "min": lo, "max": hi,
                  "nan_rows": 0, "inf_rows": 0, "extreme_rows": 0, "nonfinite_values": 0}
        if not clean:
            finite = torch.isfinite(flat)
            record["nonfinite_values"] = int((~finite).sum())
            values = flat[finite]
            record["min"], record["max"] = (
                (float(values.min()), float(values.max())) if values.numel() else (np.nan, np.nan))
            if batched:
                row_max = flat.abs().amax(dim=1)
                nan_rows = torch.isnan(row_max)
                inf_rows = torch.isinf(row_max)
                extreme_rows = row_max > self.extreme_abs
                record.update(nan_rows=int(nan_rows.sum()), inf_rows=int(inf_rows.sum()),
                              extreme_rows=int((extreme_rows & ~inf_rows).sum()))
                if node.op != "placeholder":
                    self.row_bad[chunk.start:chunk.stop] |= nan_rows | inf_rows | extreme_rows
        record["bad"] = not clean
        previous = self.records.setdefault(node.name, record)
        if previous is not record:
            _merge(previous, record, batched)


def _merge(total: dict, part: dict, batched: bool) -> None:
    """Fold a node's record on one more chunk into its record so far: ranges over finite
    values join, batch rows add up; a batch-free node's values count once."""
    total["min"] = float(np.fmin(total["min"], part["min"]))
    total["max"] = float(np.fmax(total["max"], part["max"]))
    total["bad"] = total["bad"] or part["bad"]
    if batched:
        total["shape"][0] += part["shape"][0]
        for key in ("nan_rows", "inf_rows", "extreme_rows", "nonfinite_values"):
            total[key] += part[key]
    else:
        total["nonfinite_values"] = max(total["nonfinite_values"], part["nonfinite_values"])


def capture_activations(module: torch.fx.GraphModule, inputs: torch.Tensor, *,
                        extreme_abs: float = EXTREME_ABS,
                        summarize: bool = True) -> tuple[pd.DataFrame, torch.Tensor]:
    """Run ``module`` on ``inputs`` and summarise every node's output.

    Parameters
    ----------
    module : the exported program's module (``ExportedProgram.module()``).
    inputs : float32 tensor ``[n, F]``, columns in ``model_features.position`` order.
    extreme_abs : magnitude above which a finite value counts as extreme.
    summarize : keep a row for every node (else only for bad ones).

    Returns
    -------
    nodes : one row per floating-point node output (``NODE_COLUMNS``): its range
        over finite values, how many batch rows hold NaN, inf or extreme values,
        how many values are non-finite, and whether the node is ``bad``.
    row_bad : bool tensor ``[n]``, rows where any computed node (inputs aside)
        is NaN, inf or extreme.
    """
    capture = _Capture(module, inputs.shape[0], extreme_abs)
    with torch.inference_mode():
        # a bounded batch runs in chunks the program accepts; one chunk, the input itself, if not
        for chunk in row_chunks(inputs.shape[0], batch_range(module)):
            capture.run_chunk(inputs, chunk)
    records = [r for r in capture.records.values() if summarize or r["bad"]]
    nodes = pd.DataFrame(records, columns=list(NODE_COLUMNS))
    return nodes, capture.row_bad


@dataclass
class ActivationDiagnosis:
    """What :func:`diagnose_activations` found on one batch of inputs."""

    #: per-node summary (``NODE_COLUMNS``)
    nodes: pd.DataFrame
    #: rows of the batch
    rows: int
    #: rows where some computed node is NaN, inf or extreme
    bad_rows: int = 0
    #: rows whose prediction is NaN, inf or extreme
    bad_output_rows: int = 0
    #: first bad nodes: bad, with every input node clean
    origins: list[str] = field(default_factory=list)
    #: parameters (``get_attr`` nodes) holding NaN or inf
    nonfinite_parameters: list[str] = field(default_factory=list)
    #: graph path from the first origin to the output
    path: list[str] = field(default_factory=list)
    #: input features that were tested (``FEATURE_COLUMNS``), the responsible ones first
    features: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FEATURE_COLUMNS))
    #: whether clipping/replacing the responsible features removed every bad value
    verified: bool = False
    #: contract ``add_guard`` mitigations
    guards: list[dict] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.bad_rows == 0 and not self.nonfinite_parameters

    @property
    def responsible_features(self) -> list[str]:
        return self.features.loc[self.features["responsible"], "feature"].tolist()

    def summary(self) -> str:
        if self.healthy:
            return f"no NaN, inf or extreme activations on {self.rows} rows"
        parts = [f"{self.bad_rows} of {self.rows} rows have NaN/inf/extreme activations, "
                 f"first at {', '.join(self.origins) or '-'}; "
                 f"{self.bad_output_rows} bad predictions"]
        if self.nonfinite_parameters:
            parts.append("non-finite parameters: " + ", ".join(self.nonfinite_parameters))
        if self.responsible_features:
            parts.append(("removed" if self.verified else "reduced")
                         + " by clipping/replacing input features "
                         + ", ".join(self.responsible_features))
        return "; ".join(parts)


def _row_bad(module: torch.fx.GraphModule, inputs: torch.Tensor, extreme_abs: float) -> torch.Tensor:
    return capture_activations(module, inputs, extreme_abs=extreme_abs, summarize=False)[1]


def _clip(values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
          median: torch.Tensor) -> torch.Tensor:
    """NaN to the median, then into ``[lower, upper]`` (all broadcast together)."""
    return torch.clamp(torch.where(torch.isnan(values), median, values), lower, upper)


def _repair(rows: torch.Tensor, columns: list[int], lower: torch.Tensor, upper: torch.Tensor,
            median: torch.Tensor, clip: bool) -> torch.Tensor:
    """``rows`` with ``columns`` clipped (:func:`_clip`) or set to the median."""
    fixed = rows.clone()
    cols = torch.as_tensor(columns, dtype=torch.long)
    fixed[:, cols] = (_clip(fixed[:, cols], lower[cols], upper[cols], median[cols]) if clip
                      else median[cols])
    return fixed


def _attribute(module: torch.fx.GraphModule, inputs: torch.Tensor, row_bad: torch.Tensor,
               baseline: np.ndarray, names: Sequence[str], extreme_abs: float,
               max_rows: int) -> tuple[pd.DataFrame, bool]:
    """Which input columns, clipped or replaced by baseline, clear the bad rows.

    Every column is tried alone, both ways, in one batched forward pass over a
    sample of bad rows (``2 * F * m`` rows); then the columns that helped are
    combined greedily, best first, until the sample is clean; finally the
    repair is replayed on every bad row.
    """
    n_features = inputs.shape[1]
    with np.errstate(invalid="ignore"):  # infinite baseline values make inf - inf in quantiles
        lower, upper = (torch.as_tensor(q, dtype=inputs.dtype) for q in
                        np.nanquantile(baseline, CLIP_QUANTILES, axis=0))
        median = torch.as_tensor(np.nanmedian(baseline, axis=0), dtype=inputs.dtype)
    bad = inputs[row_bad]
    sample = bad[:max_rows]
    m = sample.shape[0]
    trials = sample.repeat(2 * n_features, 1).reshape(2, n_features, m, n_features)
    column = torch.arange(n_features)  # block j changes column j: trials[., j, :, j] is [F, m]
    trials[0, column, :, column] = _clip(trials[0, column, :, column], lower[:, None],
                                         upper[:, None], median[:, None])
    trials[1, column, :, column] = median[:, None].expand(n_features, m)
    still_bad = _row_bad(module, trials.reshape(-1, n_features), extreme_abs)
    fixed = 1.0 - still_bad.reshape(2, n_features, m).float().mean(dim=2).numpy()
    features = pd.DataFrame({"feature": list(names), "position": np.arange(n_features),
                             "fixed_by_clip": fixed[0], "fixed_by_baseline": fixed[1],
                             "responsible": False})
    helpful = features[(features["fixed_by_clip"] > 0) | (features["fixed_by_baseline"] > 0)]
    clip = bool(helpful["fixed_by_clip"].max() >= helpful["fixed_by_baseline"].max()) \
        if len(helpful) else True
    order = helpful.sort_values("fixed_by_clip" if clip else "fixed_by_baseline",
                                ascending=False, kind="stable")["position"].to_numpy()
    chosen: list[int] = []
    for position in order:  # greedy over the few columns that helped, not over all features
        chosen.append(int(position))
        if not _row_bad(module, _repair(sample, chosen, lower, upper, median, clip),
                        extreme_abs).any():
            break
    verified = bool(chosen) and not _row_bad(
        module, _repair(bad, chosen, lower, upper, median, clip), extreme_abs).any()
    features.loc[chosen, "responsible"] = True
    features = features.sort_values(["responsible", "fixed_by_clip", "fixed_by_baseline"],
                                    ascending=False, kind="stable")
    return features[(features["fixed_by_clip"] > 0) | (features["fixed_by_baseline"] > 0)
                    | features["responsible"]].reset_index(drop=True), verified


def diagnose_activations(module: torch.fx.GraphModule, inputs: np.ndarray | torch.Tensor,
                         feature_names: Sequence[str], *, model_id: str,
                         baseline: np.ndarray | None = None, extreme_abs: float = EXTREME_ABS,
                         max_replay_rows: int = MAX_REPLAY_ROWS) -> ActivationDiagnosis:
    """Capture a snapshot's activations on recent inputs and explain any bad ones.

    Parameters
    ----------
    module : the snapshot's ``ExportedProgram.module()``.
    inputs : ``[n, F]`` recent serving features, columns in ``model_features.position`` order.
    feature_names : the ``F`` feature names in that order.
    model_id : the model, for the ``add_guard`` mitigations.
    baseline : ``[m, F]`` inputs that define each feature's normal range
        (clip bounds and median); default: the rows of ``inputs`` with no bad activation.
    extreme_abs : magnitude above which a finite activation counts as extreme.
    max_replay_rows : bad rows replayed per tried feature.
    """
    x = torch.from_numpy(np.array(inputs, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise ValueError(f"inputs of shape {tuple(x.shape)} do not match "
                         f"{len(feature_names)} feature names")
    nodes, row_bad = capture_activations(module, x, extreme_abs=extreme_abs)
    graph = model_graph(module)
    output = next(n.name for n in module.graph.nodes if n.op == "output")
    prediction = next(iter(graph.predecessors(output)))
    pred = nodes.set_index("node").reindex([prediction]).iloc[0]
    result = ActivationDiagnosis(
        nodes=nodes, rows=int(x.shape[0]), bad_rows=int(row_bad.sum()),
        bad_output_rows=int(np.nansum([pred["nan_rows"], pred["inf_rows"], pred["extreme_rows"]])),
        nonfinite_parameters=nodes.loc[(nodes["op"] == "get_attr") & nodes["bad"], "node"].tolist(),
    )
    bad = set(nodes.loc[nodes["bad"] & (nodes["op"] != "get_attr"), "node"])
    result.origins = [n for n in nx.topological_sort(graph)
                      if n in bad and not bad.intersection(graph.predecessors(n))]
    if result.origins:
        result.path = nx.shortest_path(graph, result.origins[0], output)[:-1] \
            if nx.has_path(graph, result.origins[0], output) else [result.origins[0]]
    if result.healthy or result.nonfinite_parameters:
        return result
    reference = np.asarray(baseline, dtype=np.float32) if baseline is not None \
        else x[~row_bad].numpy()
    if len(reference) and row_bad.any():
        result.features, result.verified = _attribute(
            module, x, row_bad, reference, feature_names, extreme_abs, max_replay_rows)
    if result.verified:
        result.guards = [{"action": "add_guard", "model_id": model_id, "node": f, "guard": "clip"}
                         for f in result.responsible_features]
    elif result.origins:
        result.guards = [{"action": "add_guard", "model_id": model_id,
                          "node": _layernorm_site(module, result.origins[0]), "guard": "layernorm"}]
    return result


def _layernorm_site(module: torch.fx.GraphModule, origin: str) -> str:
    """The node after which a layernorm would keep ``origin``'s input in range: its batched input."""
    node = next(n for n in module.graph.nodes if n.name == origin)
    inputs = [i for i in node.all_input_nodes if i.op == "call_function" and _is_batched(i)]
    return inputs[0].name if inputs else origin
