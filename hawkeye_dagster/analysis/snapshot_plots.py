"""Plots of a snapshot's diagnosis for people: weight change, activation ranges, training curve.

Each function draws one PNG (bytes) from an analysis's frame; matplotlib is imported lazily
and drawn off-screen (``Agg``).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _subplots(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _figure(rows: int):
    return _subplots(figsize=(8, max(2.5, 0.22 * rows + 1)))


def weight_change_plot(weights: pd.DataFrame) -> bytes:
    """Horizontal bars of each tensor's relative L2 change (log scale), its normal change as a
    tick, flagged tensors in red. PNG bytes."""
    rows = weights.dropna(subset=["rel_l2"]).head(60)
    fig, ax = _figure(len(rows))
    y = np.arange(len(rows))
    colors = np.where(rows["flagged"], "tab:red", "tab:blue")
    ax.barh(y, rows["rel_l2"].clip(lower=1e-12), color=colors)
    ax.scatter(rows["normal_rel_l2"], y, marker="|", color="black", s=120, label="usual change")
    ax.set_yticks(y, rows["parameter"], fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("relative L2 change vs latest stable snapshot")
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def activation_range_plot(nodes: pd.DataFrame) -> bytes:
    """Each computed node's range over finite values (symlog scale); bad nodes in red. PNG bytes."""
    rows = nodes[nodes["batched"]].head(60)
    fig, ax = _figure(len(rows))
    y = np.arange(len(rows))
    colors = np.where(rows["bad"], "tab:red", "tab:blue")
    ax.hlines(y, rows["min"], rows["max"], colors=colors, linewidth=4)
    ax.set_yticks(y, rows["node"], fontsize=7)
    ax.set_xscale("symlog")
    ax.invert_yaxis()
    ax.set_xlabel("activation range (finite values)")
    return _png(fig)


def training_curve_plot(metrics: pd.DataFrame, curve: dict) -> bytes:
    """Loss and gradient norm per step (log scale) with the onsets found. PNG bytes."""
    fig, (top, bottom) = _subplots(2, 1, figsize=(8, 5), sharex=True)
    metrics = metrics.sort_values("step")
    top.plot(metrics["step"], metrics["loss"], lw=1)
    bottom.plot(metrics["step"], metrics["grad_norm"], lw=1, color="tab:orange")
    top.set_ylabel("loss")
    bottom.set_ylabel("grad norm")
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.set_yscale("log")
    for key, label, color in [("divergence_step", "divergence", "tab:red"),
                              ("explosion_step", "explosion", "tab:purple"),
                              ("plateau_step", "plateau", "tab:gray")]:
        if curve.get(key) is not None and pd.notna(curve[key]):
            for ax in (top, bottom):
                ax.axvline(curve[key], color=color, ls="--", lw=1)
            top.text(curve[key], top.get_ylim()[1], label, color=color, fontsize=7, va="top")
    return _png(fig)
