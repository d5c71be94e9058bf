"""Feature ablation importance of a model snapshot, and how it changed.

The attribution of feature f on row i is ``model(x_i) - model(x_i with f set
to its baseline)``: Captum's ``FeatureAblation`` definition (identical results),
computed with many ablations per forward pass. Each pass stacks ``k`` ablated
copies of ``n`` rows as a ``[k * n, F]`` batch built by one ``torch.where``,
with ``k * n`` times the widest tensor's row bounded so memory stays bounded
however many features and rows there are. A program whose input passes through
per-feature ops into linear layers (:mod:`~hawkeye_dagster.analysis.feature_prefix`)
is ablated at those layers' outputs instead, and only the rest of it runs per
ablation.

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

from hawkeye_dagster.analysis.feature_prefix import (LinearFrontier, PartialRun, linear_frontier,
                                                     row_width)
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
        Upper bound on the elements of the widest tensor of one pass (for an FX
        graph, read from its nodes' shapes; for any other model, the ablated inputs).

    Returns
    -------
    Tensor, shape (N, F)
        ``model(x) - model(x ablated)``, in the model's output dtype.

    When the model is an FX graph (as ``ep.module()`` is) whose input passes
    through per-feature ops (normalization, ``clamp``, ``log``, column slices, ...)
    into linear layers before anything mixes features
    (:func:`~hawkeye_dagster.analysis.feature_prefix.linear_frontier`), ablating a
    group only adds ``(z_baseline - z) * W[:, c]`` over the group's columns ``c`` to
    those layers' outputs: the prefix and the layers run once per row and only
    the rest of the graph runs once per ablation. Rows where that update would
    lose precision (non-finite or very large prefix values) and all other
    models run whole on the ablated inputs.
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
        frontier = linear_frontier(model)
        if frontier is None:
            attr = _ablate_inputs(model, inputs, baselines, groups, max_batch_elements)
        else:
            attr = _FrontierAblation(frontier, baselines, groups).attribute(
                inputs, max_batch_elements)
        return attr[groups].T.contiguous()


def _ablate_inputs(model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                   baselines: torch.Tensor, groups: torch.Tensor,
                   max_elements: int) -> torch.Tensor:
    """Group attributions (G, N) from whole forward passes on stacked ablated copies."""
    n_rows, n_features = inputs.shape
    members = groups[None, :] == torch.arange(int(groups.max()) + 1)[:, None]  # (G, F)
    width = (row_width(list(model.graph.nodes), n_features)
             if isinstance(model, torch.fx.GraphModule) else n_features)
    rows_per_pass, per_pass = _pass_shape(n_rows, width, max_elements)
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


def _pass_shape(n_rows: int, width: int, max_elements: int) -> tuple[int, int]:
    """``(rows, ablations)`` of one pass, so that ``rows * ablations * width <= max_elements``."""
    rows = max(1, min(n_rows, max_elements // max(width, 1)))
    return rows, max(1, max_elements // (rows * max(width, 1)))


#: largest |change| x |weight| of one column the frontier update takes on: float32
#: cancellation then costs at most 2**10 * 2**-24 (6e-5) of a layer output; rows beyond
#: it (or non-finite) run whole
_UPDATE_BOUND = 2.0 ** 10


class _FrontierAblation:
    """Ablation at the outputs of the linear layers where a program's features first mix.

    For a frontier layer ``pre = z @ W.T + b`` on a prefix tensor ``z`` ``[n, C]``,
    ablating group g gives ``pre + sum over its columns c of (zb[c] - z[:, c]) * W[:, c]``,
    ``zb`` the prefix on the baseline; the rest of the graph (the tail) runs on
    those layer outputs, ``k`` groups x ``n`` rows per pass.
    """

    def __init__(self, frontier: LinearFrontier, baselines: torch.Tensor, groups: torch.Tensor):
        self.graph = frontier.graph_module
        self.linears = frontier.linears
        self.bounds = batch_range(self.graph)
        self.prefix = PartialRun(self.graph, [*(l.source for l in self.linears),
                                              *(l.node for l in self.linears)])
        self.tail = PartialRun(self.graph, [frontier.output], [l.node for l in self.linears])
        self.n_groups = int(groups.max()) + 1
        self.baselines, self.groups = baselines, groups
        self.columns = [_GroupColumns.of(l.features, groups, self.n_groups) for l in self.linears]
        self.hidden = [l.weight.shape[0] for l in self.linears]

    def attribute(self, inputs: torch.Tensor, max_elements: int) -> torch.Tensor:
        """Group attributions (G, N)."""
        n_rows, n_features = inputs.shape
        width = row_width(list(self.tail.needed), sum(self.hidden))
        rows_per_pass, per_pass = _pass_shape(n_rows, width, max_elements)
        weights_t = [l.weight.to(inputs.dtype).T for l in self.linears]         # (C, H) each
        base_sources = self._run_prefix(self.baselines[None])[0]
        parts = []
        for r0 in range(0, n_rows, rows_per_pass):
            rows = inputs[r0:r0 + rows_per_pass]
            sources, pres = self._run_prefix(rows)
            shifts = [(zb[0] - z).T for zb, z in zip(base_sources, sources)]     # (C, n) each
            exact = self._updatable(shifts, weights_t)
            original = self._run_tail(rows, pres)
            chunk = torch.empty(self.n_groups, len(rows), dtype=original.dtype)
            for g0 in range(0, self.n_groups, per_pass):
                g1 = min(g0 + per_pass, self.n_groups)
                ablated = [cols.ablate(pre, shift, w, g0, g1)
                           for cols, pre, shift, w in zip(self.columns, pres, shifts, weights_t)]
                out = self._run_tail(rows[:1].expand(len(ablated[0]), n_features), ablated)
                chunk[g0:g1] = original[None, :] - out.reshape(g1 - g0, -1)
            if not bool(exact.all()):
                chunk[:, ~exact] = _ablate_inputs(self.graph, rows[~exact], self.baselines,
                                                  self.groups, max_elements)
            parts.append(chunk)
        return torch.cat(parts, dim=1)

    def _run_prefix(self, rows: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The frontier layers' prefix inputs ``[n, C]`` and outputs ``[n, H]`` on ``rows``."""
        m = len(self.linears)
        values = run_in_batches(lambda b: torch.cat(self.prefix.values(b), dim=1), rows,
                                self.bounds)
        split = values.split([l.features.numel() for l in self.linears] + self.hidden, dim=1)
        return list(split[:m]), list(split[m:])

    def _run_tail(self, like: torch.Tensor, layer_outputs: list[torch.Tensor]) -> torch.Tensor:
        """The program's output ``(rows,)`` with the frontier layers returning
        ``layer_outputs``; ``like`` stands for the input (only its shape is read)."""
        out = run_in_batches(lambda *t: self.tail.values(*t)[0], (like, *layer_outputs),
                             self.bounds)
        if out.numel() != like.shape[0]:
            raise ValueError(f"model output {tuple(out.shape)} is not one value per row of "
                             f"{tuple(like.shape)}")
        return out.reshape(-1)

    @staticmethod
    def _updatable(shifts: list[torch.Tensor], weights_t: list[torch.Tensor]) -> torch.Tensor:
        """``(n,)`` bool: rows whose every column change is finite and within the bound."""
        exact = torch.ones(shifts[0].shape[1], dtype=torch.bool)
        for shift, w in zip(shifts, weights_t):
            scale = w.abs().amax(dim=1, keepdim=True)                            # (C, 1)
            exact &= ((shift.abs() * scale) <= _UPDATE_BOUND).all(dim=0)         # NaN fails
        return exact


@dataclass(frozen=True)
class _GroupColumns:
    """The columns of one frontier layer's input by the group they depend on: one primary
    column per group (its first; -1 for a group without one) and the rest."""

    #: ``(G,)`` each group's first column, -1 for none
    primary: torch.Tensor
    #: ``(E,)`` the other columns, and ``(E,)`` their groups
    extra: torch.Tensor
    extra_group: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor, groups: torch.Tensor, n_groups: int) -> "_GroupColumns":
        columns = torch.nonzero(features >= 0).reshape(-1)
        group_of = groups[features[columns]]
        sort = torch.argsort(group_of, stable=True)
        columns, group_of = columns[sort], group_of[sort]
        first = torch.ones_like(group_of, dtype=torch.bool)
        first[1:] = group_of[1:] != group_of[:-1]
        primary = torch.full((n_groups,), -1).index_put_((group_of[first],), columns[first])
        return cls(primary, columns[~first], group_of[~first])

    def ablate(self, pre: torch.Tensor, shift: torch.Tensor, weight_t: torch.Tensor,
               g0: int, g1: int) -> torch.Tensor:
        """The layer output ``pre`` ``[n, H]`` with groups ``g0 .. g1 - 1`` ablated, one after
        the other: ``[(g1 - g0) * n, H]``. ``shift`` ``(C, n)`` is ``zb - z``, ``weight_t``
        ``(C, H)``."""
        cols = self.primary[g0:g1]
        present = (cols >= 0)[:, None, None]
        ablated = torch.addcmul(pre, torch.where(present, shift[cols.clamp_min(0), :, None], 0),
                                weight_t[cols.clamp_min(0), None, :])       # (k, n, H)
        more = (self.extra_group >= g0) & (self.extra_group < g1)
        if bool(more.any()):
            extra = self.extra[more]
            ablated.index_add_(0, self.extra_group[more] - g0,
                               shift[extra, :, None] * weight_t[extra, None, :])
        return ablated.reshape(-1, pre.shape[1])


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
