"""Counterfactual confirmation: how much of an incident a root cause's repair removes.

Every root-cause candidate is turned into a *repair* of the degradation
window's logged served rows, and the repaired rows are scored:

- ``features``: the affected columns are mapped onto their own pre-onset
  distribution at the same hours of the day (:func:`quantile_map`), which
  undoes a distortion that keeps the rows' order (a unit change, a scale, a
  drift). Rows outside the reference's support (k-nearest-neighbour density
  ratio) are a broken share: mapped as a population of their own, or, where
  their values collapsed (a source writing zeros), left out: a broken row's
  true values are lost, but under the reference it would not have been
  there, and the kept rows stand in for it (:func:`repair_features`). A
  column that did not move maps onto itself, so a decoy repairs nothing.
  Rows are re-scored with their serving model.
- ``rescore``: rows served by some models are re-scored with others (a
  rollback target, a snapshot trained without a partition).
- ``traffic``: rows are re-weighted so each serving model carries the
  traffic fraction it had before a ramp.

Quality is the mean log-loss (binary) or squared error (regression) over
labelled rows when at least :data:`MIN_LABELED_SHARE` of the window's rows
are labelled and that loss degraded; otherwise (labels not arrived, or an
early alert whose predictions moved before the loss could show it) the
prediction distribution's distance from its pre-onset form (mean absolute
CDF difference over the pre-onset prediction's :data:`N_BINS` quantile
bins, NaN predictions a bin of their own; 0 = the pre-onset form). ``explained_share = (observed - repaired) / (observed -
pre_onset)`` clipped to ``[0, 1]``; its bootstrap interval resamples rows
(multinomial counts as a ``[B, n]`` matrix, every quality a matrix
product). A window whose degradation is not significant (the bootstrap's
lower bound of ``observed - pre_onset`` at or below 0) has nothing to
explain: every share is 0.

Pure numpy/torch: the caller reads the rows and loads the modules. Models
run only through :func:`~hawkeye_dagster.analysis.program_batches.run_program`,
every candidate's rows for one model in as few passes as
``max_batch_elements`` allows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from hawkeye_dagster.analysis.model_isolation import regression_cap, row_loss
from hawkeye_dagster.analysis.program_batches import run_program

Model = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["Candidate", "Counterfactual", "ServedRows", "counterfactuals", "quantile_map",
           "density_ratio", "repair_features"]

#: a quantile-mapping group needs this many rows
MIN_GROUP = 200
#: labelled share of the window's rows below which quality is the prediction distance
MIN_LABELED_SHARE = 0.2
#: quantile bins of the pre-onset predictions for the prediction distance
N_BINS = 20
#: neighbours of the density-ratio estimate
NEIGHBOURS = 50
#: a window row whose density ratio is below this lies outside the reference: a broken row
MIN_RATIO = 0.5
#: unless fewer rows than this share would be left (then the whole distribution moved)
MIN_KEPT = 0.2
#: bootstrap replicates and the interval's coverage
N_BOOT = 300
COVERAGE = 0.9
#: upper bound on the elements of one forward pass or one distance block
MAX_BATCH_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ServedRows:
    """Logged served rows of one model, in any order.

    ``inputs`` ``[n, F]`` float32 (the model's input order), ``prediction``
    ``[n]`` as logged, ``label`` ``[n]`` (NaN: not arrived), ``model`` ``[n]``
    int index of the serving model in the ``models`` list passed to
    :func:`counterfactuals`, ``ts`` ``[n]`` datetime64 (hours of the day, time
    blocks and timeline buckets).
    """

    inputs: np.ndarray
    prediction: np.ndarray
    label: np.ndarray
    model: np.ndarray
    ts: np.ndarray

    def __post_init__(self):
        n = len(self.prediction)
        if self.inputs.ndim != 2 or any(len(a) != n for a in (self.inputs, self.label,
                                                               self.model, self.ts)):
            raise ValueError("ServedRows arrays must all have the same number of rows")

    def __len__(self) -> int:
        return len(self.prediction)


@dataclass(frozen=True)
class Candidate:
    """One root-cause candidate's repair: any mix of the three, applied in this order."""

    kind: str
    id: str
    #: what was repaired, in words (the report's ``counterfactual.repair``)
    repair: str
    #: input columns mapped onto their pre-onset distribution
    features: tuple[int, ...] = ()
    #: serving model index -> the model index that re-scores its rows
    rescore: Mapping[int, int] = field(default_factory=dict)
    #: serving model index -> its traffic fraction before the ramp (absent: its share now)
    traffic: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Counterfactual:
    """A candidate's measured repair (the report's ``explained_share`` and ``counterfactual``)."""

    candidate: Candidate
    metric: str
    observed: float
    repaired: float
    pre_onset: float
    explained_share: float
    interval: tuple[float, float]
    #: whether the window degraded significantly from pre-onset at all
    degraded: bool
    #: per time bucket: ``observed`` and ``repaired`` quality (``pre_onset`` is a level)
    timeline: pd.DataFrame

    def to_json(self) -> dict:
        return {"repair": self.candidate.repair, "metric": self.metric,
                "observed": round(self.observed, 6), "repaired": round(self.repaired, 6),
                "pre_onset": round(self.pre_onset, 6),
                "interval": [round(self.interval[0], 3), round(self.interval[1], 3)]}


def counterfactuals(window: ServedRows, reference: ServedRows, candidates: Sequence[Candidate],
                    models: Sequence[Model], task: str, *, bucket: str = "6h",
                    n_boot: int = N_BOOT, seed: int = 0,
                    max_batch_elements: int = MAX_BATCH_ELEMENTS) -> list[Counterfactual]:
    """Measure every candidate's repair of the degradation window against the pre-onset rows.

    Parameters
    ----------
    window, reference : the degradation window's rows and the pre-onset rows.
    candidates : the repairs to measure.
    models : callables ``[b, F] -> [b]`` or ``[b, 1]`` (snapshot modules), indexed by
        ``ServedRows.model`` and by the candidates' ``rescore`` values.
    task : ``binary_classification`` or ``regression``.
    bucket : width of the timeline's buckets (a pandas frequency).

    Returns one :class:`Counterfactual` per candidate, in order.
    """
    rng = np.random.default_rng(seed)
    prediction, weight = _repairs(window, reference, candidates, models, rng, max_batch_elements)
    # column 0 is the window as observed, then one column per candidate: [n, 1 + C]
    values = np.column_stack([window.prediction, prediction])
    weights = np.column_stack([np.ones(len(window)), weight])
    resample_w = rng.multinomial(len(window), np.full(len(window), 1 / len(window)),
                                 n_boot).astype(np.float64)                     # [B, n]
    resample_r = rng.multinomial(len(reference), np.full(len(reference), 1 / len(reference)),
                                 n_boot).astype(np.float64)                     # [B, m]
    qualities = [_DistanceQuality(reference.prediction)]
    if np.isfinite(window.label).mean() >= MIN_LABELED_SHARE and np.isfinite(reference.label).any():
        qualities.insert(0, _LossQuality(task, window, reference))
    for quality in qualities:  # the labelled loss, else (or if it did not move) the predictions
        boot = quality.window(resample_w, values, weights)                     # [B, 1 + C]
        pre_boot = quality.reference(resample_r)                                # [B]
        degraded = bool(np.quantile(boot[:, 0] - pre_boot, (1 - COVERAGE) / 2) > 0)
        if degraded:
            break
    point = quality.window(np.ones((1, len(window))), values, weights)[0]       # [1 + C]
    pre = float(quality.reference(np.ones((1, len(reference))))[0])
    share = _share(point[0], point[1:], pre)
    shares = _share(boot[:, :1], boot[:, 1:], pre_boot[:, None])               # [B, C]
    low, high = np.quantile(shares, [(1 - COVERAGE) / 2, (1 + COVERAGE) / 2], axis=0)
    timeline = _timeline(window.ts, bucket, quality, values, weights)
    out = []
    for c, candidate in enumerate(candidates):
        interval = (float(low[c]), float(high[c])) if degraded else (0.0, 0.0)
        out.append(Counterfactual(
            candidate, quality.name, float(point[0]), float(point[c + 1]), pre,
            float(share[c]) if degraded else 0.0, interval, degraded,
            timeline[["ts", "observed", c + 1]].rename(columns={c + 1: "repaired"})))
    return out


def _share(observed, repaired, pre_onset):
    rise = observed - pre_onset
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(rise > 0, (observed - repaired) / np.where(rise > 0, rise, 1.0), 0.0)
    return np.clip(np.nan_to_num(share, nan=0.0), 0.0, 1.0)


def _timeline(ts: np.ndarray, bucket: str, quality, values: np.ndarray,
              weights: np.ndarray) -> pd.DataFrame:
    """Quality per time bucket: a one-hot ``[T, n]`` matrix through the same products."""
    buckets = pd.DatetimeIndex(ts).floor(bucket)
    codes, grid = pd.factorize(buckets, sort=True)
    onehot = np.zeros((len(grid), len(ts)))
    onehot[codes, np.arange(len(ts))] = 1.0
    table = pd.DataFrame(quality.window(onehot, values, weights))
    return table.rename(columns={0: "observed"}).assign(ts=grid)


# --- repairs --------------------------------------------------------------------------------

def _repairs(window: ServedRows, reference: ServedRows, candidates: Sequence[Candidate],
             models: Sequence[Model], rng: np.random.Generator,
             max_batch_elements: int) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate's repaired predictions and row weights, ``[n, C]`` each.

    The rows to re-score are gathered per model across candidates, so each
    model runs once on all of them (in passes of ``max_batch_elements``).
    """
    n, n_c = len(window), len(candidates)
    prediction = np.repeat(window.prediction[:, None].astype(np.float64), n_c, axis=1)
    weight = np.ones((n, n_c))
    jobs: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for c, cand in enumerate(candidates):
        inputs = window.inputs
        if cand.features:
            cols = list(cand.features)
            inputs = inputs.copy()
            inputs[:, cols], weight[:, c] = repair_features(
                window.inputs[:, cols], window.ts, reference.inputs[:, cols], reference.ts,
                rng=rng, max_elements=max_batch_elements)
        scorer = window.model.copy()
        for served, by in cand.rescore.items():
            scorer[window.model == served] = by
        redo = (scorer != window.model) | bool(cand.features)
        for m in np.unique(scorer[redo]):
            rows = np.flatnonzero(redo & (scorer == m))
            jobs.setdefault(int(m), []).append((c, rows, inputs[rows]))
        if cand.traffic:
            weight[:, c] *= _traffic_weights(window.model, cand.traffic)
    for m, parts in jobs.items():
        out = _score(models[m], np.concatenate([x for _, _, x in parts]), max_batch_elements)
        stops = np.cumsum([len(rows) for _, rows, _ in parts])
        for (c, rows, _), part in zip(parts, np.split(out, stops[:-1])):
            prediction[rows, c] = part
    return prediction, weight


def _score(model: Model, inputs: np.ndarray, max_elements: int) -> np.ndarray:
    """``model`` on ``inputs`` ``[n, F]`` in passes of at most ``max_elements`` inputs."""
    step = max(1, max_elements // max(inputs.shape[1], 1))
    with torch.no_grad():
        parts = [run_program(model, torch.from_numpy(np.ascontiguousarray(inputs[i:i + step])))
                 .reshape(-1).double().numpy() for i in range(0, len(inputs), step)]
    return np.concatenate(parts) if parts else np.empty(0)


def _traffic_weights(model: np.ndarray, target: Mapping[int, float]) -> np.ndarray:
    """Row weights giving each serving model its ``target`` share of the rows (others keep
    theirs, scaled to fill the rest)."""
    codes, counts = np.unique(model, return_counts=True)
    share = dict(zip(codes.tolist(), counts / len(model)))
    fixed = {m: float(target[m]) for m in share if m in target}
    free = sum(s for m, s in share.items() if m not in fixed)
    rest = max(0.0, 1.0 - sum(fixed.values()))
    goal = {m: fixed.get(m, share[m] * rest / free if free else 0.0) for m in share}
    total = sum(goal.values()) or 1.0
    return np.array([goal[m] / total / share[m] for m in codes])[np.searchsorted(codes, model)]


def quantile_map(values: np.ndarray, ts: np.ndarray, reference: np.ndarray,
                 reference_ts: np.ndarray, *, weights: np.ndarray | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Each column of ``values`` ``[n, k]`` (rows at times ``ts``) mapped onto the same column
    of ``reference`` ``[m, k]`` by quantile mapping: a row at (weighted) mid-rank ``u`` among
    the window rows of its time block gets the ``u`` quantile (linear interpolation) of the
    reference rows at the same hours of the day.

    A block is the shortest of :data:`BLOCK_HOURS` in which every block holds
    :data:`MIN_GROUP` window rows and every slot of the day :data:`MIN_GROUP`
    reference rows (a map estimated from ``m`` rows moves a row by about
    ``spread / sqrt(m)`` even where nothing shifted), else the whole window
    onto the whole reference. Blocks keep a drift that grows during the
    window from being spread over it; same hours keep daily cycles. NaN sorts
    last on both sides (a null share maps onto the reference's); ties are
    broken at random so an atom spreads over the quantiles it covers.
    ``weights`` ``[n]`` (default 1) weigh the window's rows.
    """
    rng = rng or np.random.default_rng(0)
    weights = np.ones(len(values)) if weights is None else np.asarray(weights, float)
    g_win, g_ref, slot = _blocks(pd.DatetimeIndex(ts), pd.DatetimeIndex(reference_ts), weights)
    out = np.empty(values.shape, dtype=values.dtype)
    for j in range(values.shape[1]):
        out[:, j] = _map_groups(values[:, j], g_win, weights, reference[:, j], g_ref, slot, rng)
    return out


#: time blocks (hours, dividing a day) tried for :func:`quantile_map`, shortest first
BLOCK_HOURS = (1, 2, 3, 4, 6, 8, 12, 24)


def _blocks(ts: pd.DatetimeIndex, reference_ts: pd.DatetimeIndex, weights: np.ndarray):
    """Window block codes ``[n]``, reference slot codes ``[m]`` and each block's slot."""
    hour = ts.hour.to_numpy()
    ref_hour = reference_ts.hour.to_numpy()
    start = ts.min().floor("D") if len(ts) else pd.Timestamp(0)
    hours = ((ts - start) // pd.Timedelta("1h")).to_numpy() if len(ts) else np.zeros(0, int)
    for size in BLOCK_HOURS:
        block, slot_ref = hours // size, ref_hour // size
        codes, g_win = np.unique(block, return_inverse=True)
        rows = np.bincount(g_win, weights=(weights > 0).astype(float))
        slots = np.bincount(slot_ref, minlength=24 // size)
        slot = (hour // size)[np.unique(g_win, return_index=True)[1]]
        if rows.min(initial=MIN_GROUP) >= MIN_GROUP and slots.min() >= MIN_GROUP:
            return g_win, slot_ref, slot
    return np.zeros(len(ts), np.int64), np.zeros(len(reference_ts), np.int64), np.zeros(1, int)


def _map_groups(x: np.ndarray, g: np.ndarray, w: np.ndarray, ref: np.ndarray,
                g_ref: np.ndarray, slot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Quantile mapping of ``x`` (row weights ``w``) within window groups ``g`` onto ``ref``
    in the reference group ``slot[g]``, vectorized by sorting on (group, value)."""
    order = np.lexsort((rng.random(len(x)), _nan_last(x), g))
    total = np.bincount(g, weights=w, minlength=len(slot))
    before = np.cumsum(total) - total
    u = np.empty(len(x))
    u[order] = (np.cumsum(w[order]) - w[order] / 2 - before[g[order]]) \
        / np.maximum(total[g[order]], 1e-12)
    ref_sorted = ref[np.lexsort((_nan_last(ref), g_ref))]
    n_ref = np.bincount(g_ref, minlength=int(slot.max(initial=0)) + 1)
    start = np.cumsum(n_ref) - n_ref
    s = slot[g]
    last = np.maximum(n_ref[s] - 1, 0)
    pos = np.clip(u * n_ref[s] - 0.5, 0, last)
    lo = np.floor(pos).astype(np.int64)
    a = ref_sorted[np.minimum(start[s] + lo, len(ref) - 1)]
    b = ref_sorted[np.minimum(start[s] + np.minimum(lo + 1, last), len(ref) - 1)]
    frac = pos - lo
    with np.errstate(invalid="ignore"):
        mapped = np.where((frac > 0) & np.isfinite(b), a + frac * (b - a), a)
    return np.where(n_ref[s] > 0, mapped, x)


def _nan_last(x: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(x), np.inf, x)


def _standardizer(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the reference's median and standard deviation (1 where it has none)."""
    scale = np.nanstd(reference, axis=0)
    return np.nanmedian(reference, axis=0), np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def density_ratio(window: np.ndarray, reference: np.ndarray, *, k: int = NEIGHBOURS,
                  max_elements: int = MAX_BATCH_ELEMENTS) -> np.ndarray:
    """Per window row ``[n]``: ``p_reference(x) / p_window(x)`` of its columns ``[n, k]``
    against ``reference`` ``[m, k]``, from the share of reference rows among its ``k``
    nearest neighbours in both samples (itself excluded; columns standardized by the
    reference, NaN at its median; the share smoothed by half a neighbour)."""
    center, scale = _standardizer(reference)

    def standard(x):
        return torch.from_numpy(np.nan_to_num((x - center) / scale, nan=0.0, posinf=0.0,
                                              neginf=0.0).astype(np.float32))

    win, ref = standard(window), standard(reference)
    n, m = len(win), len(ref)
    k = min(k, n - 1 + m)
    if k <= 0:
        return np.ones(n)
    from_ref = np.empty(n)
    step = max(1, max_elements // max(n + m, 1))
    pooled = torch.cat([ref, win])
    for i in range(0, n, step):
        d = torch.cdist(win[i:i + step], pooled)
        rows = torch.arange(i, min(i + step, n))
        d[rows - i, m + rows] = float("inf")  # not its own neighbour
        nearest = d.topk(k, largest=False).indices
        from_ref[i:i + step] = (nearest < m).double().mean(dim=1).numpy()
    q = (from_ref * k + 0.5) / (k + 1)
    return q / (1 - q) * (n / max(m, 1))


def repair_features(values: np.ndarray, ts: np.ndarray, reference: np.ndarray,
                    reference_ts: np.ndarray, *, rng: np.random.Generator | None = None,
                    max_elements: int = MAX_BATCH_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """Affected columns ``[n, k]`` repaired towards ``reference`` ``[m, k]``: the repaired
    values ``[n, k]`` and row weights ``[n]`` (0: a broken row left out).

    Rows whose density ratio (:func:`density_ratio`) is below :data:`MIN_RATIO`
    lie outside the reference. If nearly all do (under :data:`MIN_KEPT` left),
    the whole distribution moved: every row is mapped. Otherwise those rows
    are a broken share: if their values collapsed (denser than the reference:
    a writer of zeros or defaults) they carry no information and are left
    out, the rest mapped; if not (a unit change or
    shift of some rows) they are mapped as a population of their own, and the
    rest on theirs.
    """
    rng = rng or np.random.default_rng(0)
    outside = density_ratio(values, reference, max_elements=max_elements) < MIN_RATIO
    if 1 - outside.mean() < MIN_KEPT:
        outside[:] = False
    weights = np.ones(len(values))
    if outside.any() and _collapsed(values[outside], reference, rng):
        weights = (~outside).astype(float)
        return quantile_map(values, ts, reference, reference_ts, weights=weights, rng=rng), weights
    repaired = quantile_map(values, ts, reference, reference_ts, weights=(~outside) * 1.0,
                            rng=rng)
    if outside.any():
        repaired[outside] = quantile_map(values[outside], ts[outside], reference, reference_ts,
                                         rng=rng)
    return repaired, weights


def _collapsed(values: np.ndarray, reference: np.ndarray, rng: np.random.Generator,
               k: int = NEIGHBOURS, rows: int = 2000) -> bool:
    """Whether ``values`` (the broken rows) are denser than the reference: the median
    distance to their ``k``-th nearest neighbour below the reference's, on samples of the
    same size (standardized by the reference)."""
    size = min(len(values), len(reference), rows)
    if size <= k:
        return False
    center, scale = _standardizer(reference)

    def kth(x: np.ndarray) -> float:
        sample = x[rng.choice(len(x), size, replace=False)]
        z = torch.from_numpy(np.nan_to_num((sample - center) / scale).astype(np.float32))
        return float(torch.cdist(z, z).topk(k + 1, largest=False).values[:, -1].median())

    return kth(values) < kth(reference)


# --- quality --------------------------------------------------------------------------------

class _LossQuality:
    """Mean row loss over labelled rows, for row-weight matrices ``[G, n]``."""

    def __init__(self, task: str, window: ServedRows, reference: ServedRows):
        self.task = task
        self.name = "log_loss" if task == "binary_classification" else "squared_error"
        labels = np.concatenate([window.label, reference.label])
        self.cap = regression_cap(pd.Series(labels[np.isfinite(labels)])) \
            if task != "binary_classification" else np.inf
        self.label = window.label
        self.ref_loss = self._loss(reference.prediction, reference.label)

    def _loss(self, prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
        return row_loss(prediction, label, self.task, self.cap)

    def window(self, resample: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        loss = self._loss(values, self.label[:, None])                        # [n, K]
        w = np.where(np.isfinite(loss), weights, 0.0)
        return _ratio(resample @ (w * np.nan_to_num(loss)), resample @ w)

    def reference(self, resample: np.ndarray) -> np.ndarray:
        w = np.isfinite(self.ref_loss).astype(float)
        return _ratio(resample @ (w * np.nan_to_num(self.ref_loss)), resample @ w)


class _DistanceQuality:
    """Mean absolute CDF difference from the pre-onset predictions, over their quantile bins."""

    name = "prediction_cdf_distance"

    def __init__(self, reference_prediction: np.ndarray):
        finite = reference_prediction[np.isfinite(reference_prediction)]
        inner = np.quantile(finite, np.linspace(0, 1, N_BINS + 1)[1:-1]) if len(finite) else []
        self.edges = np.unique(inner)
        self.ref_bins = self._bins(reference_prediction)
        counts = np.bincount(self.ref_bins, minlength=self.n_bins)
        self.ref_cdf = np.cumsum(counts / counts.sum())

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 2  # the finite bins, then NaN

    def _bins(self, prediction: np.ndarray) -> np.ndarray:
        bins = np.searchsorted(self.edges, prediction, side="right")
        return np.where(np.isfinite(prediction), bins, self.n_bins - 1)

    def _distance(self, resample: np.ndarray, bins: np.ndarray, weights: np.ndarray) -> np.ndarray:
        onehot = np.zeros((len(bins), self.n_bins))
        onehot[np.arange(len(bins)), bins] = weights
        hist = resample @ onehot                                              # [G, bins]
        cdf = np.cumsum(hist, axis=1) / np.maximum(hist.sum(axis=1, keepdims=True), 1e-12)
        return np.abs(cdf - self.ref_cdf).mean(axis=1)

    def window(self, resample: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.column_stack([self._distance(resample, self._bins(values[:, k]), weights[:, k])
                                for k in range(values.shape[1])])

    def reference(self, resample: np.ndarray) -> np.ndarray:
        return self._distance(resample, self.ref_bins, np.ones(len(self.ref_bins)))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
