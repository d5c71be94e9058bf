"""Which snapshots are operationally stable: the reference that new snapshots are compared with.

A snapshot is stable once it has served (positive traffic in ``experiments``)
for ``min_served`` (default 24 h) with no degradation and no incident
attributed to it. Degradation is judged against the snapshot it replaced (its
model's previous published snapshot) on the hours both served, from the served
predictions: log-loss (squared error for regression) and calibration bias
where labels have arrived, per hour, with a one-sided paired t-test so that
hour-to-hour noise is not mistaken for a change. When the two never served
the same hours, the predecessor's last hours before the snapshot took over
stand in (Welch's t-test). Any NaN or infinite prediction is a degradation.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd
from scipy import stats

from hawkeye_dagster.analysis.model_isolation import MIN_LABELED, bucket_quality

#: stable snapshots whose stable-to-stable changes define a normal one (weights, importance)
STABLE_HISTORY = 5
MIN_SERVED = pd.Timedelta("24h")
#: one-sided significance level of each quality test
ALPHA = 0.01
#: a worse loss must also be this much worse (relative) to count, and a calibration
#: bias this much larger relative to the predecessor's mean prediction
MIN_RELATIVE_CHANGE = 0.02
#: fewer comparable hours than this: quality cannot be judged
MIN_HOURS = 3
_HOUR = pd.Timedelta("1h")

_COMPARISON_COLUMNS = ["comparison", "hours_compared", "loss", "predecessor_loss", "loss_p_value",
                       "bias", "predecessor_bias", "bias_p_value", "predecessor_prediction"]
STABLE_COLUMNS = (
    "model_id", "snapshot_id", "published_at", "artifact", "predecessor", "first_served", "served_hours",
    "stable_since", "comparison", "hours_compared", "loss", "predecessor_loss", "loss_p_value",
    "bias", "predecessor_bias", "bias_p_value", "nan_predictions", "degraded", "attributed",
    "stable", "reason",
)


def serving_periods(experiments: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """When each snapshot served: disjoint intervals of positive traffic up to ``as_of``.

    A row of ``experiments`` holds from its ``ts`` until the next row of the same
    (experiment, model, segment); intervals of one snapshot over all its arms
    and segments are merged. Returns ``snapshot_id``, ``start``, ``end``,
    ``elapsed`` (served time before ``start``), sorted by snapshot and start.
    """
    keys = ["experiment_id", "model_id", "segment"]
    rows = experiments.sort_values([*keys, "ts"], kind="stable")
    end = rows.groupby(keys, sort=False)["ts"].shift(-1).fillna(as_of).clip(upper=as_of)
    spans = pd.DataFrame({"snapshot_id": rows["snapshot_id"], "start": rows["ts"], "end": end})
    spans = spans[(rows["traffic_fraction"] > 0) & (spans["end"] > spans["start"])]
    spans = spans.sort_values(["snapshot_id", "start"], kind="stable", ignore_index=True)
    # merge overlaps: a new interval starts where the start passes every earlier end
    reach = spans.groupby("snapshot_id")["end"].cummax()
    previous = reach.groupby(spans["snapshot_id"]).shift()
    block = (previous.isna() | (spans["start"] > previous)).cumsum()
    merged = spans.groupby(block).agg(snapshot_id=("snapshot_id", "first"), start=("start", "min"),
                                      end=("end", "max")).reset_index(drop=True)
    length = merged["end"] - merged["start"]
    merged["elapsed"] = length.groupby(merged["snapshot_id"]).cumsum() - length
    return merged


def _stable_since(periods: pd.DataFrame, min_served: pd.Timedelta) -> pd.DataFrame:
    """Per snapshot: first served time, total served hours, and when it reached ``min_served``."""
    length = periods["end"] - periods["start"]
    reached = (periods["elapsed"] + length >= min_served) & (periods["elapsed"] < min_served)
    since = (periods["start"] + (min_served - periods["elapsed"])).where(reached)
    per = pd.DataFrame({"snapshot_id": periods["snapshot_id"], "start": periods["start"],
                        "hours": length / _HOUR, "since": since})
    return per.groupby("snapshot_id").agg(first_served=("start", "min"),
                                          served_hours=("hours", "sum"),
                                          stable_since=("since", "min"))


def _compare(mine: pd.DataFrame, theirs: pd.DataFrame, first_hour: pd.Timestamp) -> dict:
    """Quality of one snapshot against its predecessor from their hourly quality rows."""
    mine = mine[mine["n_labeled"] >= MIN_LABELED].set_index("ts")
    theirs = theirs[theirs["n_labeled"] >= MIN_LABELED].set_index("ts")
    common = mine.index.intersection(theirs.index)
    if len(common) >= MIN_HOURS:
        a, b, comparison = mine.loc[common], theirs.loc[common], "same hours"
        loss_p = stats.ttest_rel(a["loss"], b["loss"], alternative="greater").pvalue
        bias_p = stats.ttest_rel(a["bias"].abs(), b["bias"].abs(), alternative="greater").pvalue
    else:
        a = mine
        b = theirs[theirs.index < first_hour].tail(max(len(mine), MIN_HOURS))
        if len(a) < MIN_HOURS or len(b) < MIN_HOURS:
            return {"comparison": "none", "hours_compared": min(len(a), len(b))}
        comparison = "hours before"
        loss_p = stats.ttest_ind(a["loss"], b["loss"], equal_var=False,
                                 alternative="greater").pvalue
        bias_p = stats.ttest_ind(a["bias"].abs(), b["bias"].abs(), equal_var=False,
                                 alternative="greater").pvalue
    return {"comparison": comparison, "hours_compared": len(a),
            "loss": a["loss"].mean(), "predecessor_loss": b["loss"].mean(), "loss_p_value": loss_p,
            "bias": a["bias"].mean(), "predecessor_bias": b["bias"].mean(), "bias_p_value": bias_p,
            "predecessor_prediction": b["prediction_mean"].mean()}


def stable_snapshots(snapshots: pd.DataFrame, experiments: pd.DataFrame, samples: pd.DataFrame,
                     tasks: dict[str, str], *, as_of: pd.Timestamp | None = None,
                     min_served: pd.Timedelta = MIN_SERVED,
                     attributed: Collection[str] = ()) -> pd.DataFrame:
    """Judge every published snapshot: has it served long enough, well enough, to be a reference?

    Parameters
    ----------
    snapshots, experiments : the contract tables.
    samples : ``serving_samples`` rows (``model_id``, ``ts``, ``snapshot_id``,
        ``prediction``, ``label``; no feature columns needed).
    tasks : ``model_id -> task`` from ``models``.
    as_of : the end of the observed period (default: the latest sample or experiment row).
    min_served : serving time a snapshot needs before it can be stable.
    attributed : snapshot ids that an incident or alert has been attributed to.

    Returns
    -------
    One row per snapshot (``STABLE_COLUMNS``), by model and publication time:
    served time, the quality comparison with its ``predecessor`` (mean hourly
    loss and calibration bias, p-values), ``nan_predictions``, ``degraded``,
    ``stable`` (with ``stable_since``, the moment it had served ``min_served``)
    and a readable ``reason``.
    """
    if as_of is None:
        as_of = max([t for t in (samples["ts"].max(), experiments["ts"].max()) if pd.notna(t)],
                    default=pd.Timestamp.now(tz="UTC"))
    table = snapshots.sort_values(["model_id", "published_at", "snapshot_id"], ignore_index=True)
    table["predecessor"] = table.groupby("model_id")["snapshot_id"].shift()
    served = _stable_since(serving_periods(experiments, as_of), min_served)
    table = table.join(served, on="snapshot_id")
    table["served_hours"] = table["served_hours"].fillna(0.0)
    samples = samples[samples["ts"] <= as_of]
    quality = {
        model: bucket_quality(part, tasks[model], _HOUR, by=["snapshot_id"])
        for model, part in samples.groupby("model_id", observed=True) if model in tasks
    }
    by_snapshot = {sid: q for per_model in quality.values()
                   for sid, q in per_model.groupby("snapshot_id", observed=True)}
    empty = pd.DataFrame(columns=["ts", "n", "n_labeled", "nan_count", "loss", "bias",
                                  "prediction_mean"])
    comparisons = [
        _compare(by_snapshot.get(row.snapshot_id, empty), by_snapshot.get(row.predecessor, empty),
                 row.first_served.floor(_HOUR))
        if isinstance(row.predecessor, str) and pd.notna(row.first_served) else
        {"comparison": "none", "hours_compared": 0}
        for row in table.itertuples()
    ]
    table = table.join(pd.DataFrame(comparisons, index=table.index, columns=_COMPARISON_COLUMNS))
    table["nan_predictions"] = [int(by_snapshot.get(s, empty)["nan_count"].sum())
                                for s in table["snapshot_id"]]
    worse_loss = ((table["loss_p_value"] < ALPHA)
                  & (table["loss"] > table["predecessor_loss"] * (1 + MIN_RELATIVE_CHANGE)))
    worse_bias = ((table["bias_p_value"] < ALPHA)
                  & (table["bias"].abs() > table["predecessor_bias"].abs()
                     + MIN_RELATIVE_CHANGE * table["predecessor_prediction"].abs()))
    table["degraded"] = worse_loss | worse_bias | (table["nan_predictions"] > 0)
    table["attributed"] = table["snapshot_id"].isin(set(attributed))
    long_enough = table["served_hours"] >= min_served / _HOUR
    table["stable"] = long_enough & ~table["degraded"] & ~table["attributed"]
    table["stable_since"] = table["stable_since"].where(table["stable"])
    table["reason"] = _reasons(table, worse_loss, worse_bias, long_enough, min_served)
    return table.reindex(columns=list(STABLE_COLUMNS))


def _reasons(table: pd.DataFrame, worse_loss: pd.Series, worse_bias: pd.Series,
             long_enough: pd.Series, min_served: pd.Timedelta) -> pd.Series:
    """Why each snapshot is or is not stable, in words."""
    parts = pd.DataFrame({
        "nan": np.where(table["nan_predictions"] > 0,
                        table["nan_predictions"].astype(str) + " NaN/inf predictions", ""),
        "loss": np.where(worse_loss, "loss " + table["loss"].map("{:.4g}".format) + " vs "
                         + table["predecessor_loss"].map("{:.4g}".format) + " of "
                         + table["predecessor"].astype(str), ""),
        "bias": np.where(worse_bias, "calibration bias " + table["bias"].map("{:+.3g}".format)
                         + " vs " + table["predecessor_bias"].map("{:+.3g}".format), ""),
        "alert": np.where(table["attributed"], "an incident is attributed to it", ""),
        "time": np.where(long_enough, "", "served " + table["served_hours"].map("{:.1f}".format)
                         + f" h of {min_served / _HOUR:g} h"),
    })
    text = parts.apply(lambda r: "; ".join(p for p in r if p), axis=1)
    return text.where(~table["stable"], "served " + table["served_hours"].map("{:.1f}".format)
                      + " h without degradation")


def latest_stable(history: pd.DataFrame, model_id: str, at: pd.Timestamp,
                  n: int = STABLE_HISTORY) -> list[str]:
    """The ``n`` latest snapshots of ``model_id`` that were stable at ``at``, oldest first.

    ``history`` is :func:`stable_snapshots`' result; a snapshot counts when it
    was published before ``at`` and had become stable by then.
    """
    rows = history[(history["model_id"] == model_id) & history["stable"]
                   & (history["published_at"] < at) & (history["stable_since"] <= at)]
    return rows.sort_values("published_at")["snapshot_id"].tail(n).tolist()
