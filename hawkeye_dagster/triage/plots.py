"""The incident report's pictures (PNG bytes): what fell, which snapshot, which features, where,
and how much each root cause's repair removes.

Each function takes the :class:`~hawkeye_dagster.triage.tree.Evidence` of a
triage and returns ``None`` when that part of the tree was not reached.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from hawkeye_dagster.triage.evidence import Evidence

_SIZE = (9, 3.2)
#: node statistics drawn first on the lineage path (the contract's required ones)
_NODE_STATS = ("row_count", "null_fraction", "mean")
#: at most this many statistics per lineage node
_MAX_NODE_STATS = 4


def _figure(size=_SIZE, *grid: int, dpi: int = 90, **options):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, figsize=size, dpi=dpi, **options)


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


def lineage_plot(evidence: Evidence, node_stats: pd.DataFrame | None = None) -> bytes | None:
    """The lineage path from the root cause down to a feature, one row per node with its
    statistics over time (``node_stats``: ``lineage_node_stats`` rows of the path's nodes),
    the onset marked; 1200 px wide (Dagster's markdown dialog shows about 1280)."""
    path = evidence.lineage_path
    if not path:
        return None
    stats = node_stats if node_stats is not None else pd.DataFrame(
        columns=["ts", "node_id", "stat", "value"])
    present = set(stats["stat"])
    names = ([n for n in _NODE_STATS if n in present]
             + sorted(present - set(_NODE_STATS)))[:_MAX_NODE_STATS] or ["no statistics"]
    fig, axes = _figure((12, 1.8 * len(path) + 0.8), len(path), len(names), dpi=100,
                        sharex=True, squeeze=False)
    for i, node in enumerate(path):
        role = " (root cause)" if i == 0 else (" (feature)" if i == len(path) - 1 else "")
        mine = stats[stats["node_id"] == node]
        for j, (ax, name) in enumerate(zip(axes[i], names)):
            series = mine[mine["stat"] == name].sort_values("ts")
            if len(series):
                ax.plot(series["ts"], series["value"], lw=1.2,
                        color="tab:red" if i == 0 else "tab:blue")
            else:
                ax.text(0.5, 0.5, "no statistics", transform=ax.transAxes, ha="center",
                        va="center", color="gray", fontsize=11)
            _mark_incident(ax, evidence)
            ax.tick_params(labelsize=9)
            if i == 0:
                ax.set_title(name.replace("_", " "), fontsize=12)
            if j == 0:  # the role on a line of its own: narrower, more room for the plots
                ax.set_ylabel(f"{i + 1}. {node}" + (f"\n{role.strip()}" if role else ""),
                              fontsize=10.5, rotation=0, ha="right",
                              va="center",
                              color="tab:red" if i == 0 else "black")
    import matplotlib.dates as mdates

    for ax in axes[-1]:
        locator = mdates.AutoDateLocator(maxticks=5)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    fig.suptitle("lineage: root cause -> feature, with each node's statistics", fontsize=13)
    return _png(fig)


def counterfactual_plots(evidence: Evidence) -> dict[str, bytes]:
    """Per root cause: the degradation window's observed and repaired quality over time
    against the pre-onset level, titled with the explained share and its interval."""
    plots = {}
    for result in evidence.counterfactuals:
        cause = result.candidate
        fig, ax = _figure()
        line = result.timeline.sort_values("ts")
        ax.plot(line["ts"], line["observed"], lw=1.2, color="tab:red", label="observed")
        ax.plot(line["ts"], line["repaired"], lw=1.2, color="tab:green",
                label=f"repaired ({cause.kind} {cause.id})")
        ax.axhline(result.pre_onset, color="gray", ls="--", lw=1, label="pre-onset")
        low, high = result.interval
        ax.set_title(f"{cause.kind} {cause.id}: repair removes {result.explained_share:.0%} "
                     f"({low:.0%}-{high:.0%}) of the rise", fontsize=10)
        ax.set_ylabel(result.metric.replace("_", " "))
        ax.legend(loc="best", fontsize=8)
        plots[f"Counterfactual of {cause.kind} {cause.id}"] = _png(fig)
    return plots


def report_plots(evidence: Evidence, node_stats: pd.DataFrame | None = None) -> dict[str, bytes]:
    """Every plot the evidence allows, by title (``node_stats``: see :func:`lineage_plot`)."""
    plots = {"Top line": topline_plot(evidence),
             "Model quality by snapshot": quality_plot(evidence),
             "Feature shifts": features_plot(evidence),
             "Lineage path": lineage_plot(evidence, node_stats),
             **counterfactual_plots(evidence)}
    return {title: png for title, png in plots.items() if png is not None}
