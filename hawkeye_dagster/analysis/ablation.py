"""Feature ablation importance of a model snapshot, and how it changed.

The attribution of feature f on row i is ``model(x_i) - model(x_i with f set
to its baseline)``: Captum's ``FeatureAblation`` definition (identical results),
computed with many ablations per forward pass. Each pass stacks ``k`` ablated
copies of ``n`` rows as a ``[k * n, F]`` batch built by one ``torch.where``,
with ``k * n * F`` bounded so memory stays bounded however many features and
rows there are.

Two comparisons turn attributions into evidence:

- :func:`importance_change`: mean |attribution| of each feature under the
  current snapshot vs a previous stable one, on the same rows, with a paired
  bootstrap over rows (a feature the model now leans on much more or less);
- :func:`contribution_shift`: mean attribution of each feature on window rows
  vs baseline rows under one snapshot (Welch's t-test): the share of a
  prediction shift that each feature's new values account for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from hawkeye_dagster.analysis.program_batches import batch_range, run_in_batches, run_program

#: default bound on the elements of one pass; about 4 MB of float32 stays in cache
MAX_BATCH_ELEMENTS = 1 << 20


def ablation_attributions(model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                          baselines: torch.Tensor | float = 0.0, *,
                          groups: torch.Tensor | None = None,
                          max_batch_elements: int = MAX_BATCH_ELEMENTS) -> torch.Tensor:
    """Per-row ablation attributions, equal to Captum's ``FeatureAblation``.

    Parameters
    ----------
    model : callable
        Maps a float tensor ``[batch, F]`` to ``[batch]`` or ``[batch, 1]``
        (for a ``torch.export`` program: ``ep.module()``).
    inputs : Tensor, shape (N, F)
    baselines : Tensor of shape (F,) or float
        The value each feature is replaced by (e.g. its reference mean).
    groups : int Tensor, shape (F,), optional
        Group id of each feature (``0 .. G-1``); a group is ablated as a whole
        and each of its features gets the group's attribution.
    max_batch_elements : int
        Upper bound on the elements of the tensors of one pass (ablated
        inputs, or ablated first-layer outputs).

    Returns
    -------
    Tensor, shape (N, F)
        ``model(x) - model(x ablated)``, in the model's output dtype.

    When the model is an FX graph (as ``ep.module()`` is) whose input feeds a
    single linear layer, ablating a feature only adds ``(baseline - x) *
    W[:, f]`` to that layer's output: the layer runs once per row and only the
    rest of the graph runs once per ablation, which removes most of the work
    of a wide first layer. Other models run whole on the ablated inputs.
    """
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be [N, F], got {tuple(inputs.shape)}")
    n_features = inputs.shape[1]
    baselines = torch.as_tensor(baselines, dtype=inputs.dtype).expand(n_features)
    groups = (torch.arange(n_features) if groups is None
              else torch.as_tensor(groups, dtype=torch.long))
    if groups.shape != (n_features,) or (n_features and int(groups.min()) < 0):
        raise ValueError(f"groups must hold one id >= 0 per feature, got {tuple(groups.shape)}")
    with torch.inference_mode():
        layer = _input_linear(model)
        if layer is None:
            attr = _ablate_inputs(model, inputs, baselines, groups, max_batch_elements)
        else:
            attr = _ablate_first_layer(layer, inputs, baselines, groups, max_batch_elements)
        return attr[groups].T.contiguous()


def _ablate_inputs(model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                   baselines: torch.Tensor, groups: torch.Tensor,
                   max_elements: int) -> torch.Tensor:
    """Group attributions (G, N) from whole forward passes on stacked ablated copies."""
    n_rows, n_features = inputs.shape
    members = groups[None, :] == torch.arange(int(groups.max()) + 1)[:, None]  # (G, F)
    rows_per_pass = max(1, min(n_rows, max_elements // max(n_features, 1)))
    per_pass = max(1, max_elements // (rows_per_pass * max(n_features, 1)))
    parts = []
    for r0 in range(0, n_rows, rows_per_pass):
        rows = inputs[r0:r0 + rows_per_pass]
        original = _forward(model, rows)                                       # (n,)
        chunk = []
        for g0 in range(0, len(members), per_pass):
            mask = members[g0:g0 + per_pass, None, :]                           # (k, 1, F)
            ablated = torch.where(mask, baselines, rows[None])                  # (k, n, F)
            out = _forward(model, ablated.reshape(-1, n_features)).reshape(len(mask), -1)
            chunk.append(original[None, :] - out)                               # (k, n)
        parts.append(torch.cat(chunk))
    return torch.cat(parts, dim=1)


def _ablate_first_layer(layer: "_InputLinear", inputs: torch.Tensor, baselines: torch.Tensor,
                        groups: torch.Tensor, max_elements: int) -> torch.Tensor:
    """Group attributions (G, N), ablating at the output of the input's linear layer."""
    n_rows, n_features = inputs.shape
    weight_t = layer.weight.to(inputs.dtype).T                                 # (F, H)
    hidden = weight_t.shape[1]
    order = torch.argsort(groups, stable=True)         # features of a group next to each other
    sorted_groups = groups[order]
    group_start = torch.searchsorted(sorted_groups, torch.arange(int(groups.max()) + 2))
    singletons = bool((torch.diff(group_start) == 1).all())
    rows_per_pass = max(1, min(n_rows, max_elements // max(hidden, 1)))
    per_pass = max(1, max_elements // (rows_per_pass * max(hidden, 1)))
    parts = []
    for r0 in range(0, n_rows, rows_per_pass):
        rows = inputs[r0:r0 + rows_per_pass]
        pre = torch.nn.functional.linear(rows, weight_t.T, layer.bias)        # (n, H)
        original = _forward(layer.tail(pre, rows), rows)
        shift = (baselines - rows).T[order]                                    # (F, n)
        chunk = []
        for g0 in range(0, len(group_start) - 1, per_pass):
            g1 = min(g0 + per_pass, len(group_start) - 1)
            f0, f1 = int(group_start[g0]), int(group_start[g1])
            # the layer's output with each group ablated: pre + sum over it of shift * W[:, f]
            if singletons:
                ablated = torch.addcmul(pre, shift[f0:f1, :, None], weight_t[order[f0:f1], None, :])
            else:
                ablated = pre.repeat(g1 - g0, 1, 1).index_add_(
                    0, sorted_groups[f0:f1] - g0,
                    shift[f0:f1, :, None] * weight_t[order[f0:f1], None, :])
            batch = ablated.reshape(-1, hidden)
            like = rows[:1].expand(len(batch), n_features)  # only its shape is read
            out = _forward(layer.tail(batch, like), like).reshape(g1 - g0, -1)
            chunk.append(original[None, :] - out)
        parts.append(torch.cat(chunk))
    return torch.cat(parts, dim=1)


@dataclass(frozen=True)
class _InputLinear:
    """An FX graph whose input feeds one linear layer, and a way to run the rest of it."""

    graph_module: torch.fx.GraphModule
    node: torch.fx.Node
    weight: torch.Tensor
    bias: torch.Tensor | None

    def tail(self, layer_output: torch.Tensor, inputs_like: torch.Tensor) -> Callable:
        """The graph as a function of its input whose linear layer returns ``layer_output``,
        run in the batches the program accepts (the layer output cut along with the input)."""
        def once(output: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
            out = _Substitute(self.graph_module, self.node, output).run(batch)
            return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out

        bounds = batch_range(self.graph_module)
        return lambda batch: run_in_batches(once, (layer_output, batch), bounds)


class _Substitute(torch.fx.Interpreter):
    """Runs a graph with one node's value given instead of computed."""

    def __init__(self, module: torch.fx.GraphModule, node: torch.fx.Node, value: torch.Tensor):
        super().__init__(module)
        self._node, self._value = node, value

    def run_node(self, n: torch.fx.Node):
        return self._value if n is self._node else super().run_node(n)


#: users of the input that only read its shape, so a stand-in of the same shape serves them
_SHAPE_ONLY = {torch.ops.aten.sym_size.int, torch.ops.aten.sym_numel.default,
               torch.ops.aten.sym_stride.int}


def _input_linear(model: Callable) -> _InputLinear | None:
    """The input's linear layer, if the model is an FX graph whose input feeds only that layer."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    placeholders = [n for n in model.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    x = placeholders[0]
    compute = [u for u in x.users
               if not (u.op == "call_module" and str(u.target) == "_guards_fn")
               and not (u.op == "call_function" and u.target in _SHAPE_ONLY)]
    if len(compute) != 1:
        return None
    node = compute[0]
    if node.target is not torch.ops.aten.linear.default or node.args[0] is not x or node.kwargs:
        return None
    params = [_attribute(model, a) for a in node.args[1:]]
    if any(p is None for p in params) or len(params) not in (1, 2):
        return None
    return _InputLinear(model, node, params[0], params[1] if len(params) == 2 else None)


def _attribute(model: torch.fx.GraphModule, arg) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node refers to (None for anything else)."""
    if not isinstance(arg, torch.fx.Node) or arg.op != "get_attr":
        return None
    value = model
    for part in str(arg.target).split("."):
        value = getattr(value, part)
    return value if isinstance(value, torch.Tensor) else None


def importance_change(current: torch.Tensor | np.ndarray, previous: torch.Tensor | np.ndarray,
                      features: Sequence[str], *, n_resamples: int = 1000, confidence: float = 0.95,
                      alpha: float = 0.025, min_ratio: float = 1.5, seed: int = 0) -> pd.DataFrame:
    """How each feature's importance changed between two snapshots on the same rows.

    Parameters
    ----------
    current, previous : arrays, shape (N, F)
        Attributions of the same N rows under the two snapshots.

    Returns
    -------
    DataFrame with one row per feature
        ``importance``, ``previous_importance`` (mean |attribution|),
        ``ratio`` (current / previous: inf for a feature without importance
        under the previous snapshot, NaN without importance under either), its
        percentile-bootstrap confidence interval ``ratio_low, ratio_high``
        (see :func:`_percentiles` for resamples with infinite ratios),
        ``p_value`` (two-sided, for
        ``ratio == 1``; resampling rows, paired across the two snapshots),
        ``significant`` (``p_value`` below ``alpha`` after Bonferroni over
        features, and the ratio beyond ``min_ratio`` either way; the
        smallest p-value is ``2 / (n_resamples + 1)``, so with F features a
        change can be significant only when ``n_resamples > 2 F / alpha``;
        row resampling does not see how much routine retrains vary, so the
        callers keep the default rather than raise it) and a
        readable ``summary``; the most changed features first.

    The bootstrap draws multinomial row weights, so all resamples of all
    features are one matrix product: (resamples, N) x (N, 2F).
    """
    cur, prev = np.abs(_numpy(current)), np.abs(_numpy(previous))
    if cur.shape != prev.shape:
        raise ValueError(f"attributions differ in shape: {cur.shape} vs {prev.shape}")
    n_rows, n_features = cur.shape
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_rows, np.full(n_rows, 1 / n_rows), size=n_resamples) / n_rows
    both = weights @ np.concatenate([cur, prev], axis=1)                      # (R, 2F)
    ratio = _ratio(cur.mean(axis=0), prev.mean(axis=0))
    boot = _log(_ratio(both[:, :n_features], both[:, n_features:]))          # (R, F)
    tail = (1 - confidence) / 2
    low, high = np.exp(_percentiles(boot, tail, 1 - tail))
    p_value = _bootstrap_p(boot)
    large = (ratio >= min_ratio) | (ratio <= 1 / min_ratio)
    table = pd.DataFrame({
        "feature": list(features),
        "importance": cur.mean(axis=0),
        "previous_importance": prev.mean(axis=0),
        "ratio": ratio,
        "ratio_low": low,
        "ratio_high": high,
        "p_value": p_value,
        "significant": (p_value * n_features < alpha) & large,
    })
    table["summary"] = [f"importance x{r:.3g} ({lo:.3g}-{hi:.3g}), p={p:.2g}"
                        for r, lo, hi, p in zip(ratio, low, high, p_value)]
    order = np.argsort(-np.abs(np.nan_to_num(_log(ratio), posinf=50, neginf=-50)), kind="stable")
    return table.iloc[order].reset_index(drop=True)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` of non-negative importances: ``x / 0`` is inf, ``0 / 0`` NaN (no
    importance under either snapshot), with no floating-point warnings."""
    out = np.where(num > 0, np.inf, np.nan).astype(np.result_type(num, den))
    return np.divide(num, den, out=out, where=den > 0)


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log of non-negative values, ``log(0) = -inf`` and NaN kept, without warnings."""
    return np.log(x, out=np.where(x == 0, -np.inf, np.nan).astype(x.dtype), where=x > 0)


def _percentiles(log_ratios: np.ndarray, low: float, high: float) -> np.ndarray:
    """The ``low`` and ``high`` quantiles of each column (NaN ignored), shape (2, F); an all-NaN
    column gives NaN.

    Linear interpolation between the two nearest order statistics, as ``np.nanquantile``;
    where one of them is infinite (resamples without importance under one snapshot), the
    end is the order statistic outside the interval instead: interpolating toward an
    infinity is undefined arithmetic.
    """
    out = np.full((2, log_ratios.shape[1]), np.nan)
    present = ~np.isnan(log_ratios).all(axis=0)
    if not present.any():
        return out
    values = log_ratios[:, present]
    big = np.finfo(np.float64).max / 4  # stands in for infinity; never overflows a lerp
    linear = np.nanquantile(np.clip(values, -big, big), [low, high], axis=0)
    outer = np.stack([np.nanquantile(values, low, axis=0, method="lower"),
                      np.nanquantile(values, high, axis=0, method="higher")])
    inner = np.stack([np.nanquantile(values, low, axis=0, method="higher"),
                      np.nanquantile(values, high, axis=0, method="lower")])
    out[:, present] = np.where(np.isinf(outer) | np.isinf(inner), outer, linear)
    return out


def contribution_shift(window: torch.Tensor | np.ndarray, baseline: torch.Tensor | np.ndarray,
                       features: Sequence[str]) -> pd.DataFrame:
    """How much each feature's attribution moved between baseline rows and window rows.

    Parameters
    ----------
    window : array, shape (Nw, F)
        Attributions of rows from the degradation window.
    baseline : array, shape (Nb, F)
        Attributions of rows from normal operation, under the same snapshot.

    Returns
    -------
    DataFrame with one row per feature
        ``baseline_contribution``, ``window_contribution`` (mean attribution),
        ``shift`` (their difference; for an additive model the shifts add up
        to the shift of the mean prediction), ``t`` and ``p_value`` (Welch's
        t-test, two-sided; for two constant sides 1 if equal, else 0).
    """
    win, base = _numpy(window).astype(np.float64), _numpy(baseline).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        test = sps.ttest_ind(win, base, axis=0, equal_var=False)
    shift = win.mean(axis=0) - base.mean(axis=0)
    # Welch's test is undefined when both sides are constant: equal means no shift, else certain
    certain = np.isfinite(shift) & (shift != 0)
    p_value = np.where(np.isnan(test.pvalue), np.where(certain, 0.0, 1.0), test.pvalue)
    return pd.DataFrame({
        "feature": list(features),
        "baseline_contribution": base.mean(axis=0),
        "window_contribution": win.mean(axis=0),
        "shift": shift,
        "t": test.statistic,
        "p_value": p_value,
    })


def _forward(model: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    out = run_program(model, batch)  # in the batches a bounded program accepts
    if out.numel() != batch.shape[0]:
        raise ValueError(f"model output {tuple(out.shape)} is not one value per row of "
                         f"{tuple(batch.shape)}")
    return out.reshape(-1)


def _bootstrap_p(log_ratios: np.ndarray, tie: float = 1e-6) -> np.ndarray:
    """Two-sided percentile-bootstrap p-value of ``log ratio == 0`` per column, shape (F,).

    Log ratios within ``tie`` of 0 (float32 rounding of equal attributions)
    count on both sides.
    """
    n = np.isfinite(log_ratios).sum(axis=0)
    below = (log_ratios <= tie).sum(axis=0)
    above = (log_ratios >= -tie).sum(axis=0)
    p = np.minimum(1.0, 2 * (np.minimum(below, above) + 1) / (n + 1))
    return np.where(n > 0, p, 1.0)


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
