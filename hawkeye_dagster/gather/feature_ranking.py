"""The ranked feature list of a model's anomaly, from the lake.

:func:`rank_features` reads what the ranking rests on (hourly statistics and sampled rows of
the model's serving samples, a day at a time; the serving snapshot and its previous
operationally stable one, through the archive checks), runs the analyses (feature isolation,
ablation contributions, importance change) and combines their evidence with
:func:`~hawkeye_dagster.analysis.feature_ranking.combine_evidence`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from hawkeye_dagster.analysis.ablation import (ablation_attributions, contribution_shift,
                                               importance_change)
from hawkeye_dagster.analysis.feature_isolation import isolate_features
from hawkeye_dagster.analysis.feature_ranking import (RANKING_COLUMNS, RankingSettings,
                                                      combine_evidence)
from hawkeye_dagster.analysis.feature_stats import ReferenceProfile
from hawkeye_dagster.analysis.model_isolation import QUALITY_COLUMNS
from hawkeye_dagster.errors import BadSnapshotError, UnknownIdError
from hawkeye_dagster.gather.serving_stats import lake_edges, lake_stats, model_features
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.time_range import TimeRange

_DAY = pd.Timedelta("1D")


def rank_features(reader: TelemetryReader, model_id: str, *, onset: pd.Timestamp,
                  end: pd.Timestamp, window: TimeRange | None = None,
                  snapshot_id: str | None = None,
                  settings: RankingSettings = RankingSettings()) -> pd.DataFrame:
    """The ranked features of ``model_id`` for an anomaly from ``onset`` to ``end``, from the lake.

    ``window`` bounds what is read (its start begins the baseline; default
    ``settings.baseline`` before the onset). Serving samples are read a day
    at a time, so memory holds one day plus samples. The snapshot that served
    most of the window's sampled rows (or ``snapshot_id``) is ablated on
    sampled window rows and on sampled baseline rows from the same hours of
    day. If it is not the one that served most of the baseline, its previous
    operationally stable snapshot is ablated on the window rows too
    (importance change). A snapshot that cannot be loaded leaves the
    correlation evidence alone (said in ``attrs["summary"]``).
    """
    onset, end = pd.Timestamp(onset), pd.Timestamp(end)
    start = window.start if window is not None and window.start is not None else \
        onset - settings.baseline
    features = model_features(reader, model_id)
    rng = np.random.default_rng(settings.seed)
    edges = lake_edges(reader, model_id, features,
                       TimeRange(max(start, onset - settings.edge_days * _DAY), onset),
                       n_bins=settings.n_bins, rows=settings.edge_rows, rng=rng)
    span = None if edges is None else lake_stats(
        reader, model_id, features, TimeRange(start, end), edges,
        sample_rows=settings.sample_rows, split=onset, rng=rng)
    if span is None:
        empty = pd.DataFrame({c: [] for c in RANKING_COLUMNS})
        empty.attrs.update(explained=False, summary=f"no serving samples of {model_id!r} between "
                                                    f"{start} and {onset}")
        return empty
    before = np.asarray(span.stats.hours < onset)
    reference = ReferenceProfile(edges=edges, stats=span.stats.select(hours=before))
    isolation = isolate_features(span.stats, reference, TimeRange(onset, end),
                                 TimeRange(start, onset))
    contributions = importance = model = None
    reference_snapshot, notes = None, []
    window_rows = span.samples[span.samples["ts"] >= onset]
    baseline_rows = _same_hours_of_day(span.samples[span.samples["ts"] < onset], window_rows)
    sid = snapshot_id or (window_rows["snapshot_id"].mode().iloc[0] if len(window_rows) else None)
    if sid is not None:
        try:
            model = _load_module(reader, sid)
        except BadSnapshotError as exc:
            notes.append(f"Snapshot {sid} not ablated: {exc.one_line()}.")
    if model is not None and len(window_rows) and len(baseline_rows):
        means = reference.stats.select(columns=features).pooled().mean
        base_values = torch.as_tensor(np.nan_to_num(means), dtype=torch.float32)
        x_window = _inputs(window_rows, features)
        attr_window = ablation_attributions(model, x_window, base_values)
        attr_base = ablation_attributions(model, _inputs(baseline_rows, features), base_values)
        contributions = contribution_shift(attr_window, attr_base, features)
        # a snapshot already serving before the onset cannot explain it by how it weighs features
        replaced = baseline_rows["snapshot_id"].mode().iloc[0] != sid
        if replaced:
            reference_snapshot = _previous_stable(reader, model_id, sid, start, end)
        if reference_snapshot is not None:
            previous = _load_module(reader, reference_snapshot)
            importance = importance_change(
                attr_window, ablation_attributions(previous, x_window, base_values), features,
                alpha=settings.alpha, min_ratio=settings.min_ratio, seed=settings.seed)
    table = combine_evidence(isolation, contributions, importance,
                             reference_snapshot=reference_snapshot, settings=settings)
    table.attrs["summary"] = " ".join([table.attrs["summary"], *notes])
    table.attrs.update(snapshot_id=sid, reference_snapshot=reference_snapshot)
    return table


def _same_hours_of_day(baseline: pd.DataFrame, window: pd.DataFrame) -> pd.DataFrame:
    """Baseline rows from the hours of day the window has, so daily cycles are no contribution."""
    return baseline[baseline["ts"].dt.hour.isin(window["ts"].dt.hour.unique())]


def _inputs(rows: pd.DataFrame, features: Sequence[str]) -> torch.Tensor:
    return torch.tensor(rows[list(features)].to_numpy(np.float32, na_value=np.nan))


def _load_module(reader: TelemetryReader, snapshot_id: str):
    from hawkeye_dagster.snapshot_io import load_artifact

    rows = reader.read("snapshots", equals={"snapshot_id": snapshot_id})
    if rows.empty:
        raise UnknownIdError(f"snapshot {snapshot_id!r} is not in the snapshots table")
    return load_artifact(reader, rows["artifact"].iloc[0], snapshot_id=snapshot_id).module()


def _previous_stable(reader: TelemetryReader, model_id: str, snapshot_id: str,
                     start: pd.Timestamp, end: pd.Timestamp) -> str | None:
    """The latest snapshot of the model that was operationally stable when ``snapshot_id`` came."""
    from hawkeye_dagster.analysis.stable_snapshots import latest_stable, stable_snapshots

    snapshots = reader.read("snapshots", equals={"model_id": model_id})
    published = snapshots.loc[snapshots["snapshot_id"] == snapshot_id, "published_at"]
    if published.empty:
        return None
    models = reader.read("models", columns=["model_id", "task"], equals={"model_id": model_id})
    samples = reader.serving_samples(model_id, TimeRange(start, end), columns=QUALITY_COLUMNS)
    history = stable_snapshots(snapshots, reader.read("experiments", equals={"model_id": model_id}),
                               samples.assign(model_id=model_id),
                               dict(zip(models["model_id"], models["task"])), as_of=end)
    stable = [s for s in latest_stable(history, model_id, published.iloc[0]) if s != snapshot_id]
    return stable[-1] if stable else None
