"""The shape of a summary of values that the lake's push-down and the analyses share.

The quantile levels every hourly summary reports (and their column names ``p1`` .. ``p99``),
and the check every histogram's bin edges pass. The database computes them
(:mod:`hawkeye_dagster.lake.pushdown`) and pandas computes them
(:mod:`hawkeye_dagster.analysis.feature_stats`) from this one definition, so both paths give
the same statistics.
"""

from __future__ import annotations

import numpy as np

QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
QUANTILE_NAMES: tuple[str, ...] = tuple(f"p{round(q * 100)}" for q in QUANTILES)


def check_edges(edges: np.ndarray, n_columns: int) -> np.ndarray:
    """``edges`` as the float32 ``(n_columns, B - 1)`` array every binning uses; a clear error
    for a wrong shape, non-finite or descending edges."""
    edges = np.asarray(edges, dtype=np.float32)
    if edges.ndim != 2 or edges.shape[0] != n_columns:
        raise ValueError(f"edges must have shape ({n_columns}, B - 1), got {edges.shape}")
    if not np.isfinite(edges).all() or (np.diff(edges, axis=1) < 0).any():
        raise ValueError("edges must be finite and ascending per column")
    return edges
