"""Where an exported program's input features first mix: its per-feature prefix.

Served programs often transform each input column on its own before anything
combines columns: standardization with buffers ``(x - center) / spread``,
``clamp``, ``log``, BatchNorm in eval mode, a slice, ``select`` or index of some
columns, a ``cat`` of such pieces. Every column of every tensor ``[N, C]`` in that
*prefix* is a function of one input feature (or of none, a constant column).
Ablating a feature therefore changes only the columns that depend on it, and
changes them to values that do not depend on the row: the prefix evaluated on
the baseline.

:func:`linear_frontier` walks the FX graph of ``ExportedProgram.module()``
(pre-dispatch ATen ops, as ``torch.export`` records them) from the input
placeholder, tracks the input feature of each column of each prefix tensor, and
finds the *frontier*: the ops that read prefix tensors and mix their columns.
When every one of them is a linear layer with constant weights, ``aten.linear(z,
W, b)``, an ablated layer output is the output on the rows plus ``sum over the
ablated columns c of (z_baseline[c] - z[:, c]) * W[:, c]``, and only the rest of the
graph has to run once per ablation. Anything else (LayerNorm, attention over
features, a reduction over columns) returns None. Pure torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx

__all__ = ["FrontierLinear", "LinearFrontier", "PartialRun", "linear_frontier", "row_width"]

aten = torch.ops.aten

#: ops computing each output element from the same element of each (broadcast) tensor argument
_ELEMENTWISE = {
    aten.abs.default, aten.neg.default, aten.exp.default, aten.expm1.default,
    aten.log.default, aten.log1p.default, aten.log2.default, aten.log10.default,
    aten.sqrt.default, aten.rsqrt.default, aten.reciprocal.default, aten.square.default,
    aten.sign.default, aten.floor.default, aten.ceil.default, aten.round.default,
    aten.sigmoid.default, aten.tanh.default, aten.relu.default, aten.leaky_relu.default,
    aten.gelu.default, aten.silu.default, aten.softplus.default, aten.hardtanh.default,
    aten.elu.default, aten.erf.default, aten.sin.default, aten.cos.default,
    aten.clamp.default, aten.clamp.Tensor, aten.clamp_min.default, aten.clamp_max.default,
    aten.clip.default, aten.nan_to_num.default, aten.isnan.default, aten.isinf.default,
    aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.pow.Scalar,
    aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Scalar,
    aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar,
    aten.maximum.default, aten.minimum.default, aten.fmod.Scalar, aten.remainder.Scalar,
    aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf,
    aten.eq.Scalar, aten.ne.Scalar, aten.gt.Scalar, aten.ge.Scalar, aten.lt.Scalar,
    aten.le.Scalar, aten.eq.Tensor, aten.ne.Tensor, aten.gt.Tensor, aten.ge.Tensor,
    aten.lt.Tensor, aten.le.Tensor, aten.logical_not.default, aten.logical_and.default,
    aten.logical_or.default, aten.masked_fill.Scalar,
    aten._to_copy.default, aten.to.dtype, aten.clone.default, aten.contiguous.default,
    aten.alias.default, aten.detach.default,
}

#: users of a tensor that read only its shape
_SHAPE_ONLY = {aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int}

#: a slice end that means "to the end" (torch.export writes sys.maxsize)
_TO_END = 2 ** 62


@dataclass(frozen=True)
class FrontierLinear:
    """A linear layer ``node = linear(source, weight, bias)`` that reads a prefix tensor."""

    node: torch.fx.Node
    #: the prefix tensor it reads, ``[N, C]``
    source: torch.fx.Node
    #: ``(C,)`` long: the input feature each column of ``source`` depends on, -1 for none
    features: torch.Tensor
    #: ``(H, C)``
    weight: torch.Tensor


@dataclass(frozen=True)
class LinearFrontier:
    """A program whose input reaches feature-mixing ops only through linear layers."""

    graph_module: torch.fx.GraphModule
    linears: tuple[FrontierLinear, ...]
    #: the one tensor the program returns
    output: torch.fx.Node


def linear_frontier(model: object) -> LinearFrontier | None:
    """The frontier of ``model``'s per-feature prefix, if it is made of linear layers only.

    ``model`` must be an FX graph with one ``[N, F]`` tensor input (as
    ``ep.module()`` is); anything else, or a graph that mixes features through
    any other op, returns None.
    """
    if not isinstance(model, torch.fx.GraphModule):
        return None
    placeholders = [n for n in model.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1 or _ndim(placeholders[0]) != 2:
        return None
    x = placeholders[0]
    constants = _Constants(model, x)
    features: dict[torch.fx.Node, torch.Tensor] = {x: torch.arange(_width(x))}
    frontier: dict[torch.fx.Node, FrontierLinear] = {}
    for node in model.graph.nodes:
        reads = [a for a in node.all_input_nodes if a in features]
        if not reads or node.op == "call_module" and str(node.target) == "_guards_fn" \
                or node.op == "call_function" and node.target in _SHAPE_ONLY:
            continue
        columns = _columns(node, features, constants)
        if columns is not None:
            features[node] = columns
            continue
        layer = _frontier_linear(node, features, constants)
        if layer is None:
            return None  # the input reaches an op that mixes features some other way
        frontier[node] = layer
    returned = model.graph.output_node().args[0]
    if isinstance(returned, (tuple, list)) and len(returned) == 1:
        returned = returned[0]
    if not frontier or not isinstance(returned, torch.fx.Node):
        return None
    return LinearFrontier(model, tuple(frontier.values()), returned)


def _frontier_linear(node: torch.fx.Node, features: Mapping[torch.fx.Node, torch.Tensor],
                     constants: "_Constants") -> FrontierLinear | None:
    if node.op != "call_function" or node.target is not aten.linear.default or node.kwargs:
        return None
    source, *params = node.args
    if source not in features or features[source].ndim != 1 \
            or any(p in features for p in params if isinstance(p, torch.fx.Node)):
        return None
    weight = constants.value(params[0])
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    return FrontierLinear(node, source, features[source], weight)


def _columns(node: torch.fx.Node, features: Mapping[torch.fx.Node, torch.Tensor],
             constants: "_Constants") -> torch.Tensor | None:
    """The input feature of each column of ``node``'s value if it is a prefix tensor, else None.

    A 2-D prefix tensor ``[N, C]`` maps to a ``(C,)`` tensor, a 1-D one ``[N]`` (a
    selected column) to a 0-d tensor.
    """
    if node.op != "call_function":
        return None
    target, args = node.target, node.args
    if target in _ELEMENTWISE:
        return _broadcast_columns(node, features, constants)
    if target is aten.cat.default:
        return _cat_columns(node, features)
    source = args[0] if args else None
    if not isinstance(source, torch.fx.Node) or source not in features:
        return None
    cols = features[source]
    if target is aten.slice.Tensor:
        dim, start, end, step = (list(args[1:]) + [0, None, None, 1][len(args) - 1:])[:4]
        dim = dim % (cols.ndim + 1)
        if dim == 0:  # along rows: only the whole batch keeps rows and columns
            return cols if start in (None, 0) and (end is None or end >= _TO_END) \
                and step == 1 else None
        return cols[slice(start, None if end is None or end >= _TO_END else end, step)]
    if target is aten.select.int and cols.ndim == 1 and args[1] % 2 == 1:
        return cols[args[2]]
    if target is aten.index_select.default and cols.ndim == 1 and args[1] % 2 == 1:
        index = constants.value(args[2])
        return cols[index] if isinstance(index, torch.Tensor) else None
    if target is aten.index.Tensor and cols.ndim == 1 and len(args[1]) == 2 \
            and args[1][0] is None:
        index = constants.value(args[1][1])
        return cols[index] if isinstance(index, torch.Tensor) and index.ndim == 1 else None
    if target is aten.unsqueeze.default and cols.ndim == 0 and args[1] in (1, -1):
        return cols.reshape(1)
    if target is aten.squeeze.dim and cols.ndim == 1 and len(cols) == 1 and args[1] in (1, -1):
        return cols.reshape(())
    if target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default) \
            and _same_shape(node, source):
        return cols
    if target is aten.batch_norm.default and cols.ndim == 1 and args[5] is False \
            and not any(a in features for a in args[1:5] if isinstance(a, torch.fx.Node)):
        return cols  # eval mode: a per-column affine map with the running statistics
    if target is aten.dropout.default and args[2] is False:
        return cols
    return None


def _broadcast_columns(node: torch.fx.Node, features: Mapping[torch.fx.Node, torch.Tensor],
                       constants: "_Constants") -> torch.Tensor | None:
    """Columns of an elementwise op: its prefix arguments must agree column by column, and
    its other tensor arguments must be constants without a batch dimension."""
    tensors = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
    prefix = [features[a] for a in tensors if a in features]
    if any(c.ndim != prefix[0].ndim for c in prefix):
        return None  # [N] against [N, C] would broadcast rows onto columns
    rank = prefix[0].ndim + 1  # of the tensors: [N] or [N, C]
    for other in (a for a in tensors if a not in features):
        value = constants.value(other)
        if not isinstance(value, torch.Tensor) or value.ndim > rank \
                or (value.ndim == rank and value.shape[0] != 1):
            return None  # a constant with rows of its own
    width = _width(node) if rank == 2 else 1
    stacked = torch.stack([c.expand(width) if c.ndim else c for c in prefix])
    known = torch.where(stacked >= 0, stacked, stacked.max(dim=0).values)
    if not bool((known == known[0]).all()):
        return None  # two prefix arguments depend on different features in one column
    return known[0] if prefix[0].ndim else known[0].reshape(())


def _cat_columns(node: torch.fx.Node, features: Mapping[torch.fx.Node, torch.Tensor]
                 ) -> torch.Tensor | None:
    parts, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
    if dim not in (1, -1):
        return None
    columns = []
    for part in parts:
        if part in features:
            if features[part].ndim != 1:
                return None
            columns.append(features[part])
        elif isinstance(part, torch.fx.Node) and _ndim(part) == 2:
            columns.append(torch.full((_width(part),), -1))  # a constant block
        else:
            return None
    return torch.cat(columns)


class _Constants:
    """Values of the nodes that do not depend on the input (weights, buffers, lifted indices)."""

    def __init__(self, model: torch.fx.GraphModule, x: torch.fx.Node):
        self._model, self._x = model, x
        self._memo: dict[torch.fx.Node, object] = {}

    def value(self, node: object) -> object:
        if not isinstance(node, torch.fx.Node):
            return node
        if node not in self._memo:
            self._memo[node] = self._compute(node)
        return self._memo[node]

    def _compute(self, node: torch.fx.Node) -> object:
        if node is self._x or node.op in ("placeholder", "call_module", "output"):
            return None
        if node.op == "get_attr":
            value = self._model
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        if node.op != "call_function" or any(self.value(a) is None for a in node.all_input_nodes):
            return None
        args = torch.fx.node.map_arg(node.args, self.value)
        kwargs = torch.fx.node.map_arg(node.kwargs, self.value)
        with torch.inference_mode():
            return node.target(*args, **kwargs)


def _ndim(node: torch.fx.Node) -> int | None:
    val = node.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else None


def _width(node: torch.fx.Node) -> int:
    return int(node.meta["val"].shape[1])


def _same_shape(node: torch.fx.Node, source: torch.fx.Node) -> bool:
    a, b = node.meta.get("val"), source.meta.get("val")
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape


def row_width(nodes: Sequence[torch.fx.Node], default: int) -> int:
    """The most elements per input row of any of ``nodes``' tensors (their ``meta["val"]``
    with the batch as first dimension): what bounds the memory of a pass per row."""
    widest = default
    for node in nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() >= 1 \
                and isinstance(val.shape[0], torch.SymInt):
            widest = max(widest, int(torch.Size(val.shape[1:]).numel()))
    return widest


class PartialRun(torch.fx.Interpreter):
    """Runs only what a graph needs for its ``wanted`` nodes, with the ``given`` nodes' values
    supplied instead of computed (an ablated layer output): no ancestor that only they
    need runs (the prefix, the frontier layers)."""

    def __init__(self, module: torch.fx.GraphModule, wanted: Sequence[torch.fx.Node],
                 given: Sequence[torch.fx.Node] = ()):
        super().__init__(module, garbage_collect_values=False)
        self._wanted, self._given_nodes = list(wanted), list(given)
        self._given: dict[torch.fx.Node, torch.Tensor] = {}
        #: the nodes that run (given ones included)
        self.needed = _ancestors(self._wanted, set(self._given_nodes))

    def values(self, x: torch.Tensor, *given: torch.Tensor) -> list[torch.Tensor]:
        """The wanted nodes' values for the input ``x`` and the given nodes' ``given``."""
        self._given = dict(zip(self._given_nodes, given, strict=True))
        try:
            self.run(x)
            return [self.env[n] for n in self._wanted]
        finally:
            self._given, self.env = {}, {}

    def run_node(self, n: torch.fx.Node):
        if n in self._given:
            return self._given[n]
        if n not in self.needed or n.op == "output":
            return None
        return super().run_node(n)


def _ancestors(wanted: Sequence[torch.fx.Node], given: set[torch.fx.Node]) -> set[torch.fx.Node]:
    needed, stack = set(), list(wanted)
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        if node not in given:
            stack.extend(node.all_input_nodes)
    return needed
