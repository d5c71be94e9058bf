"""Feature health: per-feature limits learned from the reference window, and alerts.

Every check compares one hourly statistic of a feature with a per-feature
limit (``observed <= limit``, or ``>=`` for lower limits). Limits default to
what the reference window itself shows, widened by a tolerance, so a feature
that is always 3% null or drifts with the time of day does not alert all the
time; any limit can be overridden per feature. The comparisons themselves run
as Great Expectations expectations (:mod:`~hawkeye_dagster.analysis.feature_expectations`);
this module builds the frame they run on and turns failures into alerts in
the shape of the contract's ``feature_alerts`` table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hawkeye_dagster.analysis.drift import drift_table
from hawkeye_dagster.analysis.feature_stats import FeatureStats, ReferenceProfile

ALERT_COLUMNS = ("ts", "feature_name", "alert_type", "severity", "detail")


@dataclass(frozen=True)
class HealthCheck:
    """One check: ``observed`` (a column of the check frame) against a per-feature ``limit``."""

    name: str
    group: str
    observed: str
    limit: str
    typical: str
    upper: bool
    description: str


CHECKS: tuple[HealthCheck, ...] = (
    HealthCheck("null_fraction", "missing_values", "null_fraction", "null_fraction_max",
                "null_fraction_typical", True, "share of null or NaN values"),
    HealthCheck("inf_fraction", "missing_values", "inf_fraction", "inf_fraction_max",
                "inf_fraction_typical", True, "share of infinite values"),
    HealthCheck("value_below_range", "value_range", "p1", "value_min", "p1_typical", False,
                "1st percentile below the reference range"),
    HealthCheck("value_above_range", "value_range", "p99", "value_max", "p99_typical", True,
                "99th percentile above the reference range"),
    HealthCheck("mean_shift", "value_range", "abs_mean_z", "mean_z_max", "mean_z_typical", True,
                "hourly mean shifted from the reference mean (sigma)"),
    HealthCheck("drift_psi", "drift", "psi", "psi_max", "psi_typical", True,
                "population stability index vs the reference"),
    HealthCheck("drift_wasserstein", "drift", "wasserstein_norm", "wasserstein_norm_max",
                "wasserstein_norm_typical", True, "Wasserstein distance / reference std"),
)


@dataclass(frozen=True)
class HealthDefaults:
    """How limits are learned from the reference window.

    Attributes
    ----------
    null_tolerance, inf_tolerance : float
        Added to the largest hourly null / inf fraction seen in the reference.
    range_margin : float
        The value range [min hourly p1, max hourly p99] of the reference is
        widened by this fraction of its width on each side.
    mean_z_max : float
        Largest allowed |hourly mean - reference mean| in units of the
        reference's hour-to-hour spread plus the hour's sampling error.
    psi_floor, wasserstein_floor : float
        Smallest drift limits (Evidently's thresholds are 0.1 for both; a PSI
        above 0.2 is the usual "significant shift").
    drift_factor : float
        Drift limits are at least this multiple of the largest hourly drift of
        the reference against itself (time-of-day variation).
    critical_factor : float
        A failure is ``critical`` when the observed value is at least this many
        times as far from the reference's typical value as the limit is.
    """

    null_tolerance: float = 0.05
    inf_tolerance: float = 0.001
    range_margin: float = 0.5
    mean_z_max: float = 6.0
    psi_floor: float = 0.2
    wasserstein_floor: float = 0.1
    drift_factor: float = 2.0
    critical_factor: float = 2.0


def learn_thresholds(reference: ReferenceProfile, columns: Sequence[str] | None = None, *,
                     defaults: HealthDefaults = HealthDefaults(),
                     overrides: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """Per-feature limits and typical values, indexed by column.

    ``overrides`` maps a feature to ``{limit column: value}`` (for example
    ``{"age": {"null_fraction_max": 0.3}}``) and wins over the learned value.
    """
    columns = list(reference.columns if columns is None else columns)
    stats = reference.stats.select(columns=columns)
    pooled = stats.pooled()
    count = stats.counts["count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        null_fraction = stats.counts["n_null"] / count
        inf_fraction = stats.counts["n_inf"] / count
    p1, p99 = stats.values["p1"], stats.values["p99"]
    low, high = np.nanmin(p1, axis=0), np.nanmax(p99, axis=0)
    margin = defaults.range_margin * (high - low)
    hourly = drift_table(stats, reference, by_hour=True)
    drift = hourly.groupby("column", sort=False)[["psi", "wasserstein_norm"]].agg(["max", "median"])
    drift = drift.reindex(columns)
    table = pd.DataFrame({
        "null_fraction_max": np.minimum(
            np.nanmax(null_fraction, axis=0) + defaults.null_tolerance, 1.0),
        "null_fraction_typical": np.nanmedian(null_fraction, axis=0),
        "inf_fraction_max": np.nanmax(inf_fraction, axis=0) + defaults.inf_tolerance,
        "inf_fraction_typical": np.nanmedian(inf_fraction, axis=0),
        "value_min": low - margin,
        "p1_typical": np.nanmedian(p1, axis=0),
        "value_max": high + margin,
        "p99_typical": np.nanmedian(p99, axis=0),
        "mean_z_max": defaults.mean_z_max,
        "mean_z_typical": 0.0,
        "psi_max": np.maximum(defaults.psi_floor, defaults.drift_factor * drift[("psi", "max")]),
        "psi_typical": drift[("psi", "median")].to_numpy(),
        "wasserstein_norm_max": np.maximum(
            defaults.wasserstein_floor, defaults.drift_factor * drift[("wasserstein_norm", "max")]),
        "wasserstein_norm_typical": drift[("wasserstein_norm", "median")].to_numpy(),
        "mean_reference": pooled.mean,
        "std_reference": pooled.std,
        "mean_spread_var": _excess_mean_variance(stats, pooled.std),
        "critical_factor": defaults.critical_factor,
    }, index=pd.Index(columns, name="column"))
    for feature, limits in (overrides or {}).items():
        unknown = set(limits) - set(table.columns)
        if feature not in table.index or unknown:
            raise KeyError(f"cannot override {sorted(unknown) or feature!r} "
                           f"for feature {feature!r}")
        for name, value in limits.items():
            table.loc[feature, name] = value
    return table


def check_frame(stats: FeatureStats, reference: ReferenceProfile,
                thresholds: pd.DataFrame) -> pd.DataFrame:
    """The frame the expectations run on: one row per (hour, feature) with stats, drift and limits.

    Only the features of ``thresholds`` are included; ``mean_z`` is the hourly
    mean's distance from the reference mean over
    ``sqrt(mean_spread_var + std_reference**2 / n_finite)``.
    """
    columns = [c for c in thresholds.index if c in set(stats.columns)]
    stats = stats.select(columns=columns)
    frame = stats.to_frame().drop(columns=["hist_count", "hist_sum"])
    drift = drift_table(stats, reference, by_hour=True)
    drift = drift[["hour", "column", "psi", "wasserstein_norm"]]
    frame = frame.merge(drift, on=["hour", "column"], how="left")
    frame = frame.merge(thresholds, left_on="column", right_index=True, how="left")
    n_finite = frame["count"] - frame["n_null"] - frame["n_inf"]
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.sqrt(frame["mean_spread_var"] + frame["std_reference"] ** 2 / n_finite)
        frame["mean_z"] = (frame["mean"] - frame["mean_reference"]) / scale
    frame["abs_mean_z"] = frame["mean_z"].abs()
    return frame


def alerts_from_failures(frame: pd.DataFrame, failures: pd.DataFrame,
                         checks: Sequence[HealthCheck] = CHECKS, *,
                         min_hours: int = 2) -> pd.DataFrame:
    """One alert per (feature, check) that failed in ``min_hours`` hours or more.

    Shaped like ``feature_alerts``. ``failures`` holds the failing rows as
    ``hour, column, check``; a check failing in a single hour is noise more
    often than not (an hour of few rows), a real problem persists. The
    alert's ``ts`` is the first failing hour; its severity is ``critical``
    when the worst hour is ``critical_factor`` times as far from typical as
    the limit.
    """
    if failures.empty:
        return empty_alerts()
    by_name = {c.name: c for c in checks}
    rows = failures.merge(frame, on=["hour", "column"], how="left")
    spec = rows["check"].map(by_name)
    rows["observed"] = _pick(rows, spec.map(lambda c: c.observed))
    rows["limit"] = _pick(rows, spec.map(lambda c: c.limit))
    rows["typical"] = _pick(rows, spec.map(lambda c: c.typical))
    with np.errstate(invalid="ignore", divide="ignore"):
        rows["excess"] = (rows["observed"] - rows["typical"]).abs() / (
            rows["limit"] - rows["typical"]).abs()
    rows = rows.sort_values(["column", "check", "hour"])
    grouped = rows.groupby(["column", "check"], sort=True)
    worst_row = rows.fillna({"excess": np.inf}).groupby(["column", "check"])["excess"].idxmax()
    worst = rows.loc[worst_row]
    worst = worst.set_index(["column", "check"])
    summary = grouped.agg(ts=("hour", "first"), hours=("hour", "size"),
                          critical_factor=("critical_factor", "first")).join(
        worst[["hour", "observed", "limit", "typical", "excess"]])
    hours_total = frame.groupby("column")["hour"].nunique()
    summary = summary[summary["hours"] >= min_hours].reset_index()
    if summary.empty:
        return empty_alerts()
    checks_of = summary["check"].map(by_name)
    critical = (summary["excess"] >= summary["critical_factor"]) | summary["observed"].isna()
    detail = [
        f"{c.description}: {c.observed} {obs:.4g} {'above' if c.upper else 'below'} limit "
        f"{lim:.4g} (reference {typ:.4g}); {n} of {hours_total[col]} hours from "
        f"{ts:%Y-%m-%dT%H:%MZ}, worst at {worst_hour:%H:%MZ}"
        for c, obs, lim, typ, n, col, ts, worst_hour in zip(
            checks_of, summary["observed"], summary["limit"], summary["typical"], summary["hours"],
            summary["column"], summary["ts"], summary["hour"])
    ]
    alerts = pd.DataFrame({
        "ts": summary["ts"],
        "feature_name": summary["column"],
        "alert_type": summary["check"],
        "severity": np.where(critical, "critical", "warning"),
        "detail": detail,
    })
    return alerts.sort_values(["ts", "feature_name", "alert_type"], ignore_index=True)


def empty_alerts() -> pd.DataFrame:
    """A ``feature_alerts`` frame with no rows and the contract's column types."""
    return pd.DataFrame({
        "ts": pd.Series([], dtype="datetime64[us, UTC]"),
        **{c: pd.Series([], dtype=str) for c in ALERT_COLUMNS[1:]},
    })


def _excess_mean_variance(stats: FeatureStats, std: np.ndarray) -> np.ndarray:
    """Hour-to-hour variance of the hourly means beyond their sampling variance: shape (C,)."""
    n = stats.n_finite
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.nanvar(np.where(n > 0, stats.values["mean"], np.nan), axis=0)
        sampling = std ** 2 / np.nanmedian(np.where(n > 0, n, np.nan), axis=0)
    return np.nan_to_num(np.maximum(spread - sampling, 0.0))


def _pick(rows: pd.DataFrame, names: pd.Series) -> np.ndarray:
    """``rows[names[i]][i]`` for every row i: the value of a per-row named column."""
    codes, uniques = pd.factorize(names)
    table = rows[list(uniques)].to_numpy(dtype=float)
    return table[np.arange(len(rows)), codes]
