"""The picture of a snapshot's model graph with what the activation capture saw at each node.

One box per node of the exported program (inputs at the top, the output at the bottom,
parameters beside the node that reads them) with its output's range over finite values and
how many rows hold NaN, inf or extreme values. Bad nodes are red, and the walk the diagnosis
found (from the responsible input feature through the first bad node to the output) is drawn
as a red path. Drawn with networkx and matplotlib (no system package), :data:`WIDTH_IN` inches
at 100 dpi (1200 px: Dagster's markdown dialog shows about 1280); a row of more boxes than fit
at the full label size gets smaller labels, down to :data:`MIN_FONT`, then wraps onto further
lines. A graph of more than :data:`MAX_DRAWN_NODES` nodes is cut to the start of the walk, its
first bad node and its end (with what feeds them), since a picture of every node would be
unreadable.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import networkx as nx
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

#: graphs with more computed nodes than this are drawn around the walk only
MAX_DRAWN_NODES = 60
#: the fx node that returns the program's result
OUTPUT = "output"
_FEATURE = "feature: "
#: boxes standing for a stretch of the walk left out
_GAP = "... "
#: nodes of a large graph's walk kept at its start, around its first bad node and at its end
_CONTEXT = 3
#: the picture's width in inches (at 100 dpi)
WIDTH_IN = 12.0
#: label sizes in points: the full one, and the smallest before rows wrap
FONT, MIN_FONT = 9.0, 7.0
_COLORS = {"bad": "#f8c9c9", "param": "#fff2cc", "input": "#d9ead3", "node": "#e8eef6",
           "gap": "white"}


def bad_walk(edges: pd.DataFrame, nodes: pd.DataFrame, path: Sequence[str]) -> list[str]:
    """The walk from the program's input to its output through the first bad node.

    ``path`` is the diagnosis's path from the first bad node (its origin) to the last node
    before the output; the walk prepends the graph path from the batched input placeholder
    to that origin, and appends the output. Empty without a bad node.
    """
    if not len(path):
        return []
    graph = nx.DiGraph(list(edges[["source", "target"]].itertuples(index=False)))
    inputs = nodes.loc[(nodes["op"] == "placeholder") & nodes["batched"], "node"]
    head = next((nx.shortest_path(graph, i, path[0]) for i in inputs
                 if nx.has_path(graph, i, path[0])), [path[0]])
    return [*head[:-1], *path, *([OUTPUT] if graph.has_node(OUTPUT) else [])]


def model_graph_plot(edges: pd.DataFrame, nodes: pd.DataFrame, *, walk: Sequence[str] = (),
                     features: Sequence[str] = (), title: str = "") -> bytes:
    """The model graph as a PNG, with each node's capture statistics.

    Parameters
    ----------
    edges : ``source, target`` node names of the program graph.
    nodes : the capture's per-node summary
        (:data:`~hawkeye_dagster.analysis.activations.NODE_COLUMNS`).
    walk : node names to draw as the red path (:func:`bad_walk`).
    features : input features found responsible, drawn above the input and joined to the walk.
    title : what the picture shows (e.g. the snapshot).
    """
    stats = nodes.set_index("node")
    graph = nx.DiGraph(list(edges[["source", "target"]].itertuples(index=False)))
    graph.remove_nodes_from([n for n in list(graph) if n not in stats.index and n != OUTPUT])
    walk = [n for n in walk if n in graph]
    total = sum(_kind(n, stats) != "param" for n in graph)
    if total > MAX_DRAWN_NODES:
        graph, walk = _focus(graph, stats, walk)
    shown = sum(_kind(n, stats) not in ("param", "gap") for n in graph)
    if walk:
        for feature in features:
            graph.add_edge(_FEATURE + feature, walk[0])
    walk = ([_FEATURE + features[0]] if walk and len(features) else []) + walk
    on_walk = set(zip(walk, walk[1:]))

    labels = {node: _label(node, stats) for node in graph}
    chars = max(len(line) for label in labels.values() for line in label.split("\n"))
    position, width, depth = _layout(graph, stats)
    font = _font(chars, width)
    if font < MIN_FONT:  # too many boxes side by side even with small labels: wrap the rows
        font = MIN_FONT
        position, width, depth = _layout(graph, stats, _columns(chars, MIN_FONT))
    height = 1.1 * depth + 0.8
    figure = Figure(figsize=(WIDTH_IN, height))
    ax = figure.add_axes((0.01, 0.01, 0.98, 1 - (0.75 if title else 0.45) / height))
    for source, target in graph.edges:
        (x0, y0), (x1, y1) = position[source], position[target]
        red = (source, target) in on_walk
        if y0 == y1:  # a parameter beside its reader: side to side
            start, end = (x0 - 0.45, y0), (x1 + 0.45, y1)
        elif y0 < y1:  # a wrapped row's parameter below its reader
            start, end = (x0, y0 + 0.33), (x1, y1 - 0.33)
        else:
            start, end = (x0, y0 - 0.33), (x1, y1 + 0.33)
        ax.annotate("", xy=end, xytext=start, zorder=1,
                    arrowprops={"arrowstyle": "-|>", "color": "tab:red" if red else "#888",
                                "lw": 3 if red else 1, "shrinkA": 0, "shrinkB": 0})
    walked = set(walk)
    for node, (x, y) in position.items():
        kind = _kind(node, stats)
        ax.text(x, y, labels[node], ha="center", va="center", fontsize=font, zorder=2,
                family="monospace",
                bbox={"boxstyle": "round,pad=0.4", "fc": _COLORS[kind],
                      "ec": "tab:red" if node in walked or kind == "bad" else "#666",
                      "lw": 2.5 if node in walked else 1})
    ax.set_xlim(-0.6, width - 0.4)
    ax.set_ylim(-depth + 0.45, 0.55)
    ax.set_axis_off()
    note = f" ({shown} of its {total} nodes)" if shown < total else ""
    if title or note:  # the title, then the key on a line of its own (both fit 1200 px)
        figure.text(0.01, 1 - 0.08 / height, title + note, fontsize=13, ha="left", va="top")
    figure.text(0.01, 1 - (0.42 if title or note else 0.08) / height,
                "red: NaN/inf/extreme values; red path: input feature -> first bad node -> "
                "output", ha="left", va="top", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _focus(graph: nx.DiGraph, stats: pd.DataFrame,
           walk: list[str]) -> tuple[nx.DiGraph, list[str]]:
    """A large graph cut down to what a picture can show: the walk's start, the nodes around
    its first bad node and its end, with what feeds them, each skipped stretch of the walk as
    one box (without a walk: the first nodes); and the walk as drawn."""
    if not walk:
        first = [n for n in nx.topological_sort(graph) if _kind(n, stats) != "param"]
        kept = set(first[:MAX_DRAWN_NODES])
        return graph.subgraph(kept | {p for n in kept for p in graph.predecessors(n)
                                      if _kind(p, stats) == "param"}).copy(), []
    origin = next((i for i, n in enumerate(walk) if _kind(n, stats) == "bad"), 0)
    keep = sorted({*range(_CONTEXT), *range(origin - _CONTEXT, origin + _CONTEXT + 1),
                   *range(len(walk) - _CONTEXT, len(walk))} & set(range(len(walk))))
    shown: list[str] = []
    for previous, i in zip([None, *keep[:-1]], keep):
        if previous is not None and i > previous + 1:
            shown.append(f"{_GAP}{i - previous - 1} nodes of the walk")
        shown.append(walk[i])
    drawn = nx.DiGraph(list(zip(shown, shown[1:])))
    drawn.add_edges_from((p, n) for n in shown if not n.startswith(_GAP)
                         for p in graph.predecessors(n) if p not in walk)
    return drawn, shown


def _kind(node: str, stats: pd.DataFrame) -> str:
    if node.startswith(_GAP):
        return "gap"
    if node.startswith(_FEATURE) or node not in stats.index:
        return "input" if node != OUTPUT else "node"
    row = stats.loc[node]
    if row["bad"]:
        return "bad"
    return {"get_attr": "param", "placeholder": "input"}.get(row["op"], "node")


def _column_in(chars: int, font: float) -> float:
    """The inches one column takes for labels of ``chars`` monospace characters a line at
    ``font`` points: the text (0.6 em a character), the box's padding and a gap."""
    return chars * 0.6 * font / 72 + 0.35


def _font(chars: int, columns: int) -> float:
    """The largest label size, up to :data:`FONT`, at which ``columns`` boxes fit side by side
    in the picture's width."""
    room = WIDTH_IN * 0.98 / max(columns, 1) - 0.35
    return min(FONT, room * 72 / (0.6 * max(chars, 1)))


def _columns(chars: int, font: float) -> int:
    """How many boxes fit side by side at ``font`` points."""
    return max(2, int(WIDTH_IN * 0.98 // _column_in(chars, font)))


def _layout(graph: nx.DiGraph, stats: pd.DataFrame,
            columns: int | None = None) -> tuple[dict, int, int]:
    """Rows by longest path from the inputs, each ordered by the mean position of its nodes'
    parents and centred; parameters to the right, in the row of the node reading them. With
    ``columns``, where a row and its parameters are more boxes than that, each parameter goes
    right of the node reading it and the row wraps onto further lines of at most ``columns``
    boxes. Returns (positions, columns, lines)."""
    params = {n for n in graph if _kind(n, stats) == "param"}
    flow = graph.subgraph(n for n in graph if n not in params)
    layer: dict[str, int] = {}
    for node in nx.topological_sort(flow):
        layer[node] = max((layer[p] + 1 for p in flow.predecessors(node)), default=0)
    rows: dict[int, list[str]] = {}
    for node in nx.topological_sort(flow):
        rows.setdefault(layer[node], []).append(node)
    side: dict[int, list[str]] = {}
    for node in sorted(params):
        readers = [layer[s] for s in graph.successors(node) if s in layer]
        side.setdefault(min(readers) if readers else 0, []).append(node)
    width = max(len(r) for r in rows.values())
    beside = max(map(len, side.values()), default=0)
    wrap = columns is not None and width + beside > columns
    position: dict[str, tuple[float, float]] = {}
    line = 0
    for depth in sorted(rows):
        def parents_x(node: str) -> float:
            xs = [position[p][0] for p in flow.predecessors(node)]
            return float(np.mean(xs)) if xs else 0.0

        row = sorted(rows[depth], key=parents_x)
        if not wrap:
            position.update({node: ((width - len(row)) / 2 + i, -float(line))
                             for i, node in enumerate(row)})
            position.update({node: (width + i, -float(line))
                             for i, node in enumerate(side.get(depth, []))})
            line += 1
            continue
        # each node followed by the parameters it is the first in its row to read
        params = set(side.get(depth, []))
        boxes = []
        for node in row:
            mine = sorted(p for p in params if node in graph.successors(p))
            params -= set(mine)
            boxes += [node, *mine]
        boxes += sorted(params)
        lines = [boxes[i:i + columns] for i in range(0, len(boxes), columns)]
        for chunk in lines:
            position.update({node: ((columns - len(chunk)) / 2 + i, -float(line))
                             for i, node in enumerate(chunk)})
            line += 1
    return position, columns if wrap else width + beside, line


def _label(node: str, stats: pd.DataFrame) -> str:
    if node not in stats.index:
        return node
    row = stats.loc[node]
    op = row["target"].split(".")[1] if row["target"].startswith("aten.") else row["op"]
    # stored tables hold the shape as its text
    shape = json.loads(row["shape"]) if isinstance(row["shape"], str) else list(row["shape"])
    if row["batched"] and shape:
        shape[0] = "n"
    lines = [f"{node}  ({op})" if op != node else node, "[" + ", ".join(map(str, shape)) + "]",
             "min -  max -" if pd.isna(row["min"])
             else f"min {row['min']:.3g}  max {row['max']:.3g}"]
    if row["batched"]:
        counts = f"NaN {row['nan_rows']}  inf {row['inf_rows']} rows"
        if row["extreme_rows"]:
            counts += f"  extreme {row['extreme_rows']}"
    else:
        counts = f"non-finite {row['nonfinite_values']}"
    return "\n".join([*lines, counts])
