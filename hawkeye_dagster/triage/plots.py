"""The incident report's pictures (PNG bytes): what fell, which snapshot, which features, where.

Each function takes the :class:`~hawkeye_dagster.triage.tree.Evidence` of a
triage and returns ``None`` when that part of the tree was not reached.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hawkeye_dagster.triage.tree import Evidence

_SIZE = (9, 3.2)


def _figure(size=_SIZE):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=90)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _mark_incident(ax, evidence: Evidence) -> None:
    if evidence.onset is not None:
        ax.axvspan(evidence.onset, evidence.end or evidence.onset, color="tab:red", alpha=0.12,
                   label="degradation")
        ax.axvline(evidence.onset, color="tab:red", lw=1)


def topline_plot(evidence: Evidence) -> bytes | None:
    """The degraded top-line series against its like-hours expectation, onset marked."""
    if evidence.topline is None or evidence.series is None:
        return None
    fig, ax = _figure()
    observed = evidence.topline.observed[evidence.series]
    ax.plot(observed.index, observed.to_numpy(), lw=1, label="observed")
    ax.plot(observed.index, evidence.topline.expected[evidence.series].to_numpy(), lw=1,
            ls="--", label="expected (like hours)")
    _mark_incident(ax, evidence)
    ax.set_title(" / ".join(evidence.series))
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def quality_plot(evidence: Evidence, smoothing: int = 6) -> bytes | None:
    """The suspect model's loss per snapshot over time (rolling mean of ``smoothing`` buckets)."""
    if evidence.quality is None or evidence.quality.empty:
        return None
    fig, ax = _figure()
    loss = evidence.quality.pivot_table(index="ts", columns="snapshot_id", values="loss",
                                        aggfunc="first")
    for snapshot in loss.columns:
        series = loss[snapshot].rolling(smoothing, min_periods=1).mean()
        ax.plot(series.index, series.to_numpy(), lw=1, label=str(snapshot))
    _mark_incident(ax, evidence)
    ax.set_title(f"{evidence.model_id}: served loss by snapshot")
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def features_plot(evidence: Evidence, top: int = 10) -> bytes | None:
    """The top-ranked features' shift scores."""
    features = evidence.features
    if features is None or features.empty:
        return None
    shown = features.head(top).iloc[::-1]
    fig, ax = _figure((9, 0.35 * len(shown) + 1.2))
    value = "z" if "z" in shown else "score"
    ax.barh([str(f) for f in shown["feature"]], shown[value].astype(float).abs(),
            color="tab:orange")
    ax.set_xlabel(f"|{value}|")
    ax.set_title("features that moved with the predictions")
    return _png(fig)


def lineage_plot(evidence: Evidence) -> bytes | None:
    """The lineage path from the root cause down to a feature, as a chain of boxes."""
    path = evidence.lineage_path
    if not path:
        return None
    fig, ax = _figure((9, 0.9 * len(path) + 0.6))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(path) - 0.5)
    ax.axis("off")
    for i, node in enumerate(path):
        y = len(path) - 1 - i
        ax.text(0.5, y, node, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "fc": "tab:red" if i == 0 else "whitesmoke",
                      "alpha": 0.3 if i == 0 else 1.0})
        if i:
            ax.annotate("", xy=(0.5, y + 0.25), xytext=(0.5, y + 0.75),
                        arrowprops={"arrowstyle": "->"})
    ax.set_title("lineage: root cause -> feature")
    return _png(fig)


def report_plots(evidence: Evidence) -> dict[str, bytes]:
    """Every plot the evidence allows, by title."""
    plots = {"Top line": topline_plot(evidence),
             "Model quality by snapshot": quality_plot(evidence),
             "Feature shifts": features_plot(evidence), "Lineage path": lineage_plot(evidence)}
    return {title: png for title, png in plots.items() if png is not None}
