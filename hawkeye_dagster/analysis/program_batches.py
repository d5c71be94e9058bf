"""Run an exported program on any number of rows, within the batch range it declares.

A snapshot's batch dimension may be declared with bounds (``Dim("batch", min=8,
max=64)``); its module then guards every call (``Guard failed: x.size()[0] <=
64``). The analyses and the simulator send it as many rows as they have, so they
run it through :func:`run_in_batches`: an input of ``n`` rows ``[n, F]`` is cut
into chunks of at most ``max`` rows, a chunk under ``min`` rows is padded by
repeating its last row, the padded outputs are dropped and the chunk outputs
concatenated: ``[n]`` (or ``[n, 1]``) as if the program accepted any batch.
A call the program accepts as it is runs unchanged, on the same tensor.

The range is read where ``torch.export`` keeps it: the batch dimension of the
input placeholder's ``meta["val"]`` is a ``SymInt`` whose expression keys
``range_constraints`` (on the ``ExportedProgram``, and copied onto the module
``ExportedProgram.module()`` returns). Like the program's own runtime check, a
lower bound of 2 or less is not enforced: ``torch.export`` records 2 for an
unbounded batch (0/1 specialization) and allows 0 and 1 rows at run time, so
only a declared ``min`` above 2 pads. Pure torch; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy
import torch
import torch.fx
from torch.utils._sympy.numbers import int_oo

__all__ = ["BatchRange", "RowChunk", "UNBOUNDED", "batch_range", "row_chunks",
           "run_in_batches", "run_program"]


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes a program accepts at run time: ``low <= rows <= high``."""

    #: fewest rows (0: any)
    low: int = 0
    #: most rows (None: no bound)
    high: int | None = None

    def accepts(self, rows: int) -> bool:
        return rows >= self.low and (self.high is None or rows <= self.high)


#: any batch: plain callables and programs without a bound
UNBOUNDED = BatchRange()


@dataclass(frozen=True)
class RowChunk:
    """Rows ``[start, stop)`` of an input, run as a batch of ``size`` rows (padding included)."""

    start: int
    stop: int
    size: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """The chunk's rows of ``tensor`` ``[n, ...]`` padded to ``[size, ...]``.

        Padding repeats the last row (zeros for an empty input); a chunk that is
        the whole unpadded tensor is ``tensor`` itself.
        """
        if self.start == 0 and self.stop == tensor.shape[0] == self.size:
            return tensor
        part = tensor[self.start:self.stop]
        pad = self.size - self.rows
        if pad <= 0:
            return part
        filler = (part[-1:].expand(pad, *part.shape[1:]) if self.rows
                  else part.new_zeros((pad, *part.shape[1:])))
        return torch.cat([part, filler])


def batch_range(program: object) -> BatchRange:
    """The batch range of an ``ExportedProgram``, or of the module its ``.module()`` returns.

    Anything else (an eager ``nn.Module``, a function, an FX graph that
    ``torch.export`` did not make) is :data:`UNBOUNDED`. A static batch ``k``
    is ``BatchRange(k, k)``. A batch that is not a plain symbol (a derived
    dimension) or has no constraint is unbounded, as the program's own input
    check treats it.
    """
    if isinstance(program, torch.export.ExportedProgram):
        user = set(program.graph_signature.user_inputs)
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
        constraints = program.range_constraints
    elif isinstance(program, torch.fx.GraphModule):
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
        constraints = getattr(program, "range_constraints", None)
    else:
        return UNBOUNDED
    val = placeholders[0].meta.get("val") if placeholders else None
    if not isinstance(val, torch.Tensor) or val.dim() == 0:
        return UNBOUNDED
    size = val.shape[0]
    if not isinstance(size, torch.SymInt):
        # a static batch; only an exported module (which carries range_constraints) guards it
        return BatchRange(int(size), int(size)) if constraints is not None else UNBOUNDED
    expr = size.node.expr
    if constraints is None:  # a module from a torch that did not copy the constraints onto it
        shape_env = size.node.shape_env
        constraints = shape_env.var_to_range if shape_env is not None else {}
    bounds = constraints.get(expr)
    if bounds is None:
        return UNBOUNDED
    low, high = _to_int(bounds.lower), _to_int(bounds.upper)
    return BatchRange(low=int(low) if math.isfinite(low) and low > 2 else 0,
                      high=int(high) if math.isfinite(high) else None)


def _to_int(value: object) -> float:
    """A range end as an int, or +-inf for an unbounded end."""
    if value in (sympy.oo, int_oo):
        return math.inf
    if value in (-sympy.oo, -int_oo):
        return -math.inf
    return int(value)  # a sympy.Integer


def row_chunks(n: int, bounds: BatchRange) -> list[RowChunk]:
    """How :func:`run_in_batches` cuts ``n`` rows: chunks of ``bounds.high`` rows, the last
    one padded up to ``bounds.low``; one chunk ``[0, n)`` when the range accepts ``n``."""
    if bounds.accepts(n):
        return [RowChunk(0, n, n)]
    step = n if bounds.high is None else max(bounds.high, 1)
    starts = range(0, n, step) if n else [0]
    return [RowChunk(s, min(s + step, n), max(min(s + step, n) - s, bounds.low)) for s in starts]


def run_in_batches(fn: Callable[..., torch.Tensor], inputs: torch.Tensor | Sequence[torch.Tensor],
                   bounds: BatchRange) -> torch.Tensor:
    """``fn(*inputs)`` on ``[n, ...]`` inputs aligned on their rows, in batches ``bounds`` accepts.

    Parameters
    ----------
    fn : maps tensors ``[b, ...]`` (one per input, the same ``b``) to a tensor ``[b, ...]``.
    inputs : one tensor or several, each ``[n, ...]``.
    bounds : the batch sizes ``fn`` accepts (:func:`batch_range`).

    Returns
    -------
    ``[n, ...]``: ``fn``'s output on each chunk, padded rows dropped, concatenated;
    ``fn(*inputs)`` itself (no copy) when ``bounds`` accepts ``n``.
    """
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"inputs differ in rows: {[tuple(t.shape) for t in tensors]}")
    chunks = row_chunks(n, bounds)
    if len(chunks) == 1 and chunks[0].size == n:
        return fn(*tensors)
    outputs = []
    for chunk in chunks:
        out = fn(*(chunk.take(t) for t in tensors))
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != chunk.size:
            raise ValueError(f"output {getattr(out, 'shape', type(out).__name__)} of a batch of "
                             f"{chunk.size} rows is not one row per input row")
        outputs.append(out[:chunk.rows])
    return torch.cat(outputs)


def run_program(module: Callable[[torch.Tensor], torch.Tensor],
                inputs: torch.Tensor) -> torch.Tensor:
    """A snapshot's module (``ExportedProgram.module()``) on ``inputs`` ``[n, F]``, any ``n``:
    ``[n]`` or ``[n, 1]``. Any other callable is called as it is."""
    return run_in_batches(module, inputs, batch_range(module))
