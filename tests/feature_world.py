"""Synthetic serving samples with known feature incidents, for the features analyses' tests.

``F`` float32 features; ``f0`` follows a daily cycle. The prediction is
``sigmoid(x @ WEIGHTS)`` of the values served (NaN served as 0), so only
``f0``..``f3`` matter. ``incidents`` maps a feature index to ``(start, how)``
where ``how`` rewrites that feature's values from ``start`` on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

START = pd.Timestamp("2026-01-01", tz="UTC")
F = 12
WEIGHTS = np.array([1.0, 0.8, -0.6, 0.5] + [0.0] * (F - 4))
FEATURES = [f"f{i}" for i in range(F)]


def serving(days: int = 8, per_hour: int = 400, seed: int = 0,
            incidents: dict[int, tuple[pd.Timestamp, Callable]] | None = None) -> pd.DataFrame:
    """Serving samples: ``ts``, ``snapshot_id``, ``prediction`` and the feature columns."""
    rng = np.random.default_rng(seed)
    n = days * 24 * per_hour
    ts = START + pd.to_timedelta(np.sort(rng.integers(0, days * 86400, n)), unit="s")
    x = rng.standard_normal((n, F)).astype(np.float32)
    x[:, 0] += np.sin(np.asarray(ts.hour) / 24 * 2 * np.pi).astype(np.float32)
    for column, (start, how) in (incidents or {}).items():
        after = np.asarray(ts >= start)
        x[after, column] = how(x[after, column])
    frame = pd.DataFrame(x, columns=FEATURES)
    frame.insert(0, "ts", ts)
    frame.insert(1, "snapshot_id", "s1")
    frame["prediction"] = 1 / (1 + np.exp(-(np.nan_to_num(x) @ WEIGHTS)))
    return frame


def serving_model() -> torch.nn.Module:
    """The model that made the predictions of :func:`serving`, as an exported program's module."""
    class Logistic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(F, 1)
            with torch.no_grad():
                self.linear.weight.copy_(torch.tensor(WEIGHTS, dtype=torch.float32)[None])
                self.linear.bias.zero_()

        def forward(self, x):
            return torch.sigmoid(self.linear(torch.nan_to_num(x)))

    batch = torch.export.Dim("batch")
    return torch.export.export(Logistic(), (torch.zeros(4, F),),
                               dynamic_shapes=({0: batch},)).module()
