"""Feature monitoring and isolation as assets: thin wiring over the features analyses.

- ``feature_reference`` (per model): bin edges and hourly statistics of a
  reference window, and the health limits learned from it;
- ``feature_stats`` (per day and model, one run per backfilled range): hourly
  statistics of the features and predictions (a model without a reference gets
  the default one first, recorded as its ``feature_reference`` materialization,
  so no prerequisite has to be materialized by hand), with the feature health checks
  (Great Expectations) as asset checks; failed checks become alerts in the
  contract's ``feature_alerts`` shape under ``feature_alerts/`` in storage,
  where the feature alert sensor picks them up;
- ``feature_drift`` (per day and model): drift of every feature and of the
  predictions against the reference, from the stored statistics only;
- ``feature_ranking`` (per model): the features that explain a prediction
  anomaly in a configurable window.

A snapshot's importance change is ``snapshot_importance_change``, with the
snapshot's other diagnoses (:mod:`hawkeye_dagster.assets.snapshots`).

The assets fill by themselves (:mod:`hawkeye_dagster.assets.automation`): the
reference and the ranking once per model, the statistics once per served day and
hourly for the latest days, drift after the statistics.

Outputs go to storage under ``features/<model>/``. Heavy imports
(torch, scipy, Great Expectations, matplotlib) happen inside the assets only.
"""

import dagster as dg
import pandas as pd

from hawkeye_dagster.assets import automation
from hawkeye_dagster.assets.metadata import md_table, saved_png_md
from hawkeye_dagster.assets.partitions import model_day_partitions, model_partitions
from hawkeye_dagster.assets.telemetry import all_partitions, telemetry_key
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.resources import HawkeyeStorage, TelemetrySource
from hawkeye_dagster.run_launcher import CRASH_RETRY_TAGS
from hawkeye_dagster.sensors.feature_alerts import HEALTH_ALERTS_DIR
from hawkeye_dagster.time_range import TimeRange

GROUP = "features"
OWNERS = ["team:ml-features"]
STORE = "features"
CHECK_DESCRIPTIONS = {
    "missing_values": "Hourly null/NaN and infinite fractions within the per-feature limits "
                      "learned from the reference window.",
    "value_range": "Hourly 1st/99th percentiles within the reference range and hourly means "
                   "within the allowed distance from the reference mean.",
    "drift": "Hourly PSI and normalized Wasserstein distance against the reference within "
             "their limits.",
}
_DAY = pd.Timedelta("1D")
#: ranked features whose hourly series the ranking plots
SHIFT_PLOT_FEATURES = 5
_BY_MODEL = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="model")


def _served_dates(reader: TelemetryReader, model_id: str) -> list[str]:
    rows = reader.read("serving_samples", columns=["date"], equals={"model_id": model_id})
    return sorted(rows["date"].unique())


def _reference(storage: HawkeyeStorage, model_id: str):
    from hawkeye_dagster.analysis.feature_stats import ReferenceProfile

    if not storage.exists(STORE, model_id, "reference.parquet"):
        raise dg.Failure(f"no reference for model {model_id!r}: materialize its "
                         "feature_reference partition first")
    return ReferenceProfile.from_frame(storage.read_parquet(STORE, model_id, "reference.parquet"))


def _day_and_model(key: str) -> tuple[pd.Timestamp, str]:
    keys = model_day_partitions.get_partition_key_from_str(key).keys_by_dimension
    return pd.Timestamp(keys["date"], tz="UTC"), keys["model"]


# --- reference --------------------------------------------------------------------------------

class ReferenceConfig(dg.Config):
    """The reference window of a model: normal operation that drift and health are judged by."""

    start: str | None = None
    """First UTC day (``YYYY-MM-DD``); default: the model's first served day."""
    days: int = 7
    """Length of the window in days."""
    n_bins: int = 30
    """Equal-frequency histogram bins per feature."""
    limits: dict[str, dict[str, float]] = {}
    """Health limits to set by hand, per feature: ``{"age": {"null_fraction_max": 0.3}}``
    (names as in ``thresholds.parquet``); the others are learned from the window."""


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"pandas", "parquet"},
    partitions_def=model_partitions,
    deps=[all_partitions("serving_samples"), telemetry_key("model_features")],
    automation_condition=automation.ONCE,
    description="Per model: bin edges (reference quantiles) and hourly statistics of the "
                "reference window, stored once so drift never re-reads it, and the per-feature "
                "health limits learned from it.",
)
def feature_reference(context: dg.AssetExecutionContext, config: ReferenceConfig,
                      telemetry: TelemetrySource, storage: HawkeyeStorage) -> dg.MaterializeResult:
    model_id = context.partition_key
    metadata = _store_reference(telemetry.reader(), storage, model_id, config)
    if metadata is None:
        raise dg.Failure(f"model {model_id!r} has no serving samples"
                         + (f" from {config.start} for {config.days} days" if config.start else ""))
    return dg.MaterializeResult(metadata=metadata)


def _store_reference(reader: TelemetryReader, storage: HawkeyeStorage, model_id: str,
                     config: ReferenceConfig) -> dict | None:
    """Compute and store a model's reference profile and health limits; their metadata, or
    ``None`` when the model served nothing in the window."""
    from hawkeye_dagster.analysis.feature_health import learn_thresholds
    from hawkeye_dagster.gather.serving_stats import lake_reference

    dates = _served_dates(reader, model_id)
    if not dates and config.start is None:
        return None
    start = pd.Timestamp(config.start or dates[0], tz="UTC")
    window = TimeRange(start, start + config.days * _DAY)
    profile = lake_reference(reader, model_id, window, n_bins=config.n_bins)
    if profile is None:
        return None
    features = [c for c in profile.columns if c != "prediction"]
    thresholds = learn_thresholds(profile, features, overrides=config.limits)
    storage.write_parquet(profile.to_frame(), STORE, model_id, "reference.parquet")
    storage.write_parquet(thresholds.reset_index(), STORE, model_id, "thresholds.parquet")
    pooled = profile.stats.pooled()
    summary = pd.DataFrame({"column": profile.columns, "rows": pooled.count,
                            "null_fraction": pooled.n_null / pooled.count,
                            "mean": pooled.mean, "std": pooled.std})
    return {
        "window": f"{window.start:%Y-%m-%d} to {window.end:%Y-%m-%d}",
        "hours": len(profile.stats.hours), "features": len(features),
        "rows": int(pooled.count.max()),
        "columns": md_table(summary, 50),
        "limits": md_table(thresholds.reset_index()[
            ["column", "null_fraction_max", "value_min", "value_max", "psi_max",
             "wasserstein_norm_max"]], 50),
    }


def _stats_reference(context: dg.AssetExecutionContext, reader: TelemetryReader,
                     storage: HawkeyeStorage, model_id: str) -> tuple | None:
    """What a model's statistics are computed against: its reference, features and health
    limits; ``None`` when it never served. The default reference is computed when none is
    stored, and recorded as a materialization of the model's ``feature_reference`` partition,
    so the UI shows where it came from and the automation does not compute it again (a
    configured reference is materialized from that asset)."""
    from hawkeye_dagster.gather.serving_stats import model_features

    if not storage.exists(STORE, model_id, "reference.parquet"):
        metadata = _store_reference(reader, storage, model_id, ReferenceConfig())
        if metadata is None:
            return None
        context.log.info(f"{model_id} had no reference: computed the default one")
        context.log_event(dg.AssetMaterialization(
            "feature_reference", partition=model_id, metadata=metadata,
            description=f"the default reference window, computed by run {context.run_id}'s "
                        "feature_stats because none was stored"))
    return (_reference(storage, model_id), model_features(reader, model_id),
            storage.read_parquet(STORE, model_id, "thresholds.parquet"))


# --- daily statistics, health checks and drift ------------------------------------------------

@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"numpy", "parquet"},
    partitions_def=model_day_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[dg.AssetDep("feature_reference", partition_mapping=_BY_MODEL),
          telemetry_key("serving_samples"), telemetry_key("model_features")],
    check_specs=[dg.AssetCheckSpec(name, asset="feature_stats", description=text)
                 for name, text in CHECK_DESCRIPTIONS.items()],
    automation_condition=automation.refresh("5 * * * *", first=automation.ONCE_SERVED_DAYS),
    description="Per day and model: hourly count, null/NaN/inf fractions, mean, std, min/max, "
                "quantiles and reference-bin histogram of every feature and of the predictions "
                "(vectorized over features and hours), on the bins of the model's reference "
                "(the default one is computed first when there is none). Health checks run on "
                "it; failures are written as feature alerts.",
)
def feature_stats(context: dg.AssetExecutionContext, telemetry: TelemetrySource,
                  storage: HawkeyeStorage) -> dg.MaterializeResult:
    from hawkeye_dagster.analysis.drift import drift_table
    from hawkeye_dagster.analysis.feature_health import CHECKS, check_frame
    from hawkeye_dagster.analysis.feature_plots import shifted_features_plot
    from hawkeye_dagster.analysis.feature_stats import PREDICTION
    from hawkeye_dagster.gather.serving_stats import lake_hourly_stats

    reader = telemetry.reader()
    done, frames, shifted, references = [], [], None, {}
    for key in context.partition_keys:
        day, model_id = _day_and_model(key)
        if model_id not in references:
            references[model_id] = _stats_reference(context, reader, storage, model_id)
        if references[model_id] is None:
            context.log.info(f"{model_id} has no serving samples: nothing on {day:%Y-%m-%d}")
            continue
        reference, features, thresholds = references[model_id]
        columns = [*features, PREDICTION]
        stats = lake_hourly_stats(reader, model_id, TimeRange(day, day + _DAY), columns,
                                  reference.edges_for(columns))
        if stats is None:
            context.log.info(f"{model_id} served nothing on {day:%Y-%m-%d}")
            continue
        storage.write_parquet(stats.to_frame(), STORE, model_id, "stats", f"{day:%Y-%m-%d}.parquet")
        frames.append((model_id, day,
                       check_frame(stats, reference, thresholds.set_index("column"))))
        done.append((model_id, day, int(stats.counts["count"][:, 0].sum())))  # rows, any column
        drift = drift_table(stats, reference)
        if shifted is None or drift["psi"].max() > shifted[2]["psi"].max():
            shifted = (stats, reference, drift, model_id, day)

    success, alerts = _health(frames, storage)
    checks = [
        dg.AssetCheckResult(
            check_name=group, severity=dg.AssetCheckSeverity.WARN,
            passed=all(success[c.name] for c in CHECKS if c.group == group),
            metadata={"alerts": md_table(alerts.loc[alerts["alert_type"].isin(
                [c.name for c in CHECKS if c.group == group]),
                ["model_id", "feature_name", "alert_type", "severity", "ts"]])})
        for group in CHECK_DESCRIPTIONS
    ]
    metadata = {
        "partitions": len(done),
        "rows": sum(n for *_, n in done),
        "alerts": len(alerts),
    }
    if shifted is not None:
        stats, reference, drift, model_id, day = shifted
        name = f"shifted-{model_id}-{day:%Y-%m-%d}.png"
        metadata["most_shifted"] = dg.MetadataValue.md(saved_png_md(
            storage, shifted_features_plot(stats, reference, drift), STORE, model_id, "plots", name))
        metadata["drift"] = md_table(drift.sort_values("psi", ascending=False)[
            ["column", "psi", "js_distance", "ks_statistic", "wasserstein_norm"]], 10)
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def _health(frames: list[tuple[str, pd.Timestamp, pd.DataFrame]],
            storage: HawkeyeStorage) -> tuple[dict[str, bool], pd.DataFrame]:
    """Run the health checks on the check frames of (model, day) partitions in one validation;
    write each partition's alerts where the feature alert sensor reads them."""
    from hawkeye_dagster.analysis.feature_expectations import run_expectations
    from hawkeye_dagster.analysis.feature_health import (CHECKS, alerts_from_failures,
                                                         empty_alerts)

    if not frames:
        return {c.name: True for c in CHECKS}, empty_alerts().assign(model_id=pd.Series(dtype=str))
    everything = pd.concat([f.assign(model_id=m) for m, _, f in frames], ignore_index=True)
    success, failed = run_expectations(everything, index=["model_id", "hour", "column"])
    alerts = []
    for model_id, day, frame in frames:
        mine = failed[(failed["model_id"] == model_id)
                      & (failed["hour"].dt.floor("D") == day)].drop(columns="model_id")
        found = alerts_from_failures(frame, mine)
        storage.write_parquet(found, HEALTH_ALERTS_DIR, f"model_id={model_id}",
                              f"date={day:%Y-%m-%d}", "alerts.parquet")
        alerts.append(found.assign(model_id=model_id))
    return success, pd.concat(alerts, ignore_index=True)


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"numpy", "parquet"},
    partitions_def=model_day_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["feature_stats", dg.AssetDep("feature_reference", partition_mapping=_BY_MODEL)],
    automation_condition=automation.FOLLOW,
    description="Per day and model: PSI, Jensen-Shannon distance, Kolmogorov-Smirnov statistic "
                "and normalized Wasserstein distance (Evidently's definitions) of every feature "
                "and of the predictions against the reference, per day and per hour, from the "
                "stored histograms (never the raw rows).",
)
def feature_drift(context: dg.AssetExecutionContext,
                  storage: HawkeyeStorage) -> dg.MaterializeResult:
    from hawkeye_dagster.analysis.drift import THRESHOLDS, drift_table
    from hawkeye_dagster.analysis.feature_stats import FeatureStats

    daily = []
    for key in context.partition_keys:
        day, model_id = _day_and_model(key)
        name = f"{day:%Y-%m-%d}.parquet"
        if not storage.exists(STORE, model_id, "stats", name):
            continue
        stats = FeatureStats.from_frame(storage.read_parquet(STORE, model_id, "stats", name))
        reference = _reference(storage, model_id)
        drift = drift_table(stats, reference)
        storage.write_parquet(drift, STORE, model_id, "drift", name)
        storage.write_parquet(drift_table(stats, reference, by_hour=True), STORE, model_id,
                              "drift_hourly", name)
        daily.append(drift.assign(model_id=model_id, date=f"{day:%Y-%m-%d}"))
    if not daily:
        return dg.MaterializeResult(metadata={"partitions": 0})
    daily = pd.concat(daily, ignore_index=True)
    drifted = daily[daily["wasserstein_norm"] >= THRESHOLDS["wasserstein_norm"]]
    return dg.MaterializeResult(metadata={
        "partitions": int(daily[["model_id", "date"]].drop_duplicates().shape[0]),
        "drifted_columns": len(drifted),
        "most_drifted": md_table(daily.sort_values("psi", ascending=False)[
            ["model_id", "date", "column", "psi", "js_distance", "ks_statistic",
             "wasserstein_norm"]]),
    })


# --- the ranked feature list ------------------------------------------------------------------

class RankingConfig(dg.Config):
    """The anomaly window to explain."""

    onset: str | None = None
    """Start of the anomaly (ISO timestamp); default: a day before ``end``."""
    end: str | None = None
    """End of the anomaly; default: the end of the model's last served hour."""
    baseline_days: int = 7
    """Normal operation before the onset that the window is compared with."""


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"pytorch", "parquet"},
    partitions_def=model_partitions,
    deps=[all_partitions("serving_samples"), telemetry_key("model_features"),
          telemetry_key("snapshots"), telemetry_key("experiments")],
    automation_condition=automation.ONCE,
    description="The features that explain the model's prediction anomaly, ranked: features "
                "whose hourly distribution shifted with the predictions, the share of the "
                "prediction shift their new values account for (ablation), and importance "
                "changes against the previous stable snapshot; or that none does. Plotted: the "
                "top features' hourly shift.",
)
def feature_ranking(context: dg.AssetExecutionContext, config: RankingConfig,
                    telemetry: TelemetrySource, storage: HawkeyeStorage) -> dg.MaterializeResult:
    from hawkeye_dagster.analysis.feature_plots import ranking_plot
    from hawkeye_dagster.gather.feature_ranking import rank_features

    model_id = context.partition_key
    reader = telemetry.reader()
    if config.end:
        end = pd.Timestamp(config.end)
    else:
        dates = _served_dates(reader, model_id)
        if not dates:
            raise dg.Failure(f"model {model_id!r} has no serving samples")
        last = pd.Timestamp(dates[-1], tz="UTC")
        served = reader.serving_samples(model_id, TimeRange(last, last + _DAY), columns=["ts"])
        end = served["ts"].max().floor("h") + pd.Timedelta("1h")
    onset = pd.Timestamp(config.onset) if config.onset else end - _DAY
    window = TimeRange(onset - config.baseline_days * _DAY, end)
    ranking = rank_features(reader, model_id, onset=onset, end=end, window=window)
    storage.write_parquet(ranking.astype({"onset": "datetime64[us, UTC]"}), STORE, model_id,
                          "ranking.parquet")
    significant = ranking[ranking["significant"]]
    metadata = {
        "window": f"{onset:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC",
        "explained": ranking.attrs["explained"],
        "summary": ranking.attrs["summary"],
        "significant": len(significant),
        "ranking": md_table(ranking[["feature", "score", "p_value", "significant", "reasons"]]),
    }
    if len(ranking):
        metadata["plot"] = dg.MetadataValue.md(
            saved_png_md(storage, ranking_plot(ranking), STORE, model_id, "ranking.png"))
        metadata["hourly_shift"] = dg.MetadataValue.md(saved_png_md(
            storage, _hourly_shift_png(reader, model_id, ranking, window, onset), STORE, model_id,
            "ranking_hourly_shift.png"))
    return dg.MaterializeResult(metadata=metadata)


def _hourly_shift_png(reader: TelemetryReader, model_id: str, ranking: pd.DataFrame,
                      window: TimeRange, onset: pd.Timestamp) -> bytes:
    """The top ranked features' hourly series over baseline and anomaly, read for them alone
    (bins from the two days before the onset, as the ranking places them)."""
    from hawkeye_dagster.analysis.feature_plots import hourly_shift_plot
    from hawkeye_dagster.analysis.feature_stats import PREDICTION
    from hawkeye_dagster.gather.serving_stats import lake_edges, lake_hourly_stats

    top = ranking.head(SHIFT_PLOT_FEATURES)
    features = top["feature"].tolist()
    edges = lake_edges(reader, model_id, features, TimeRange(onset - 2 * _DAY, onset))
    stats = lake_hourly_stats(reader, model_id, window, [*features, PREDICTION], edges)
    return hourly_shift_plot(stats, edges, top, onset, window.end, top=SHIFT_PLOT_FEATURES)


#: ``feature_reference`` cannot be in this job: an asset job holds assets of one partitions
#: definition (the reference is per model); its runs compute a missing reference themselves
feature_monitoring_job = dg.define_asset_job(
    "feature_monitoring", selection=["feature_stats", "feature_drift"],
    partitions_def=model_day_partitions, tags=CRASH_RETRY_TAGS,
    description="Statistics, health checks and drift of a model's day (backfill any range); a "
                "model without a reference gets its default feature_reference first.")

defs = dg.Definitions(
    assets=[feature_reference, feature_stats, feature_drift, feature_ranking],
    jobs=[feature_monitoring_job],
)
