"""A small synthetic serving world with one known incident, for the triage analyses' tests.

Two binary models (``m1``, ``m2``) serve ``feed/us`` half-and-half and a
regression model ``m3`` serves ``feed/eu``. Labels follow
``sigmoid(1.5 x)`` of one latent feature ``x`` (regression: ``2 x``); each
snapshot predicts from the ``x`` it is served. The top line of each segment
falls with the served log-loss (or squared error), so incidents really move it.

Incidents on ``m1`` from ``ONSET`` on:
``features`` (its input is null-filled to 0 for every snapshot),
``bad_snapshot`` (snapshot ``m1-s3`` with a wrong slope ramps 10% -> 50% -> 100%),
``traffic_ramp`` (the worse ``m1-s3`` served 5% since day 4 ramps to 60% at onset),
``nan_snapshot`` (``m1-s3`` at 30% returns NaN where ``x > 1``), ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

START = pd.Timestamp("2026-10-01", tz="UTC")
DAYS = 14
ONSET = START + pd.Timedelta("10D 06:00:00")
PER_HOUR = 80
LABEL_DELAY = pd.Timedelta("6h")
INCIDENTS = ("none", "features", "bad_snapshot", "traffic_ramp", "nan_snapshot")


def _arms(incident: str) -> list[tuple]:
    """Experiment rows: (ts, experiment_id, model_id, snapshot_id, segment, fraction)."""
    rows = [
        (START, "exp-m1-s1", "m1", "m1-s1", "us", 1.0),
        (START + pd.Timedelta("3D"), "exp-m1-s1", "m1", "m1-s1", "us", 0.0),
        (START + pd.Timedelta("3D"), "exp-m1-s2", "m1", "m1-s2", "us", 1.0),
        (START, "exp-m2-s1", "m2", "m2-s1", "us", 1.0),
        (START, "exp-m3-s1", "m3", "m3-s1", "eu", 1.0),
    ]
    day4 = START + pd.Timedelta("4D")
    h12, h24 = pd.Timedelta("12h"), pd.Timedelta("24h")
    ramps = {
        "bad_snapshot": [(ONSET, 0.1), (ONSET + h12, 0.5), (ONSET + h24, 1.0)],
        "traffic_ramp": [(day4, 0.05), (ONSET, 0.6)],
        "nan_snapshot": [(ONSET, 0.3)],
    }
    for ts, fraction in ramps.get(incident, []):
        rows.append((ts, "exp-m1-s3", "m1", "m1-s3", "us", fraction))
        rows.append((ts, "exp-m1-s2", "m1", "m1-s2", "us", 1.0 - fraction))
    return rows


def experiments(incident: str = "none") -> pd.DataFrame:
    return pd.DataFrame(_arms(incident), columns=["ts", "experiment_id", "model_id", "snapshot_id",
                                                  "segment", "traffic_fraction"])


def _snapshot_at(exp: pd.DataFrame, model: str, ts: pd.Series, rng) -> np.ndarray:
    """Draw the serving snapshot of each request from the traffic fractions in force."""
    arms = exp[exp["model_id"] == model].pivot_table(index="ts", columns="snapshot_id",
                                                     values="traffic_fraction", aggfunc="last")
    fractions = arms.ffill().fillna(0.0).reindex(ts, method="ffill").to_numpy()
    cumulative = np.cumsum(fractions, axis=1)
    draw = rng.random(len(ts))[:, None] * cumulative[:, -1:]
    return arms.columns.to_numpy()[(draw >= cumulative).sum(axis=1)]


@dataclass(frozen=True)
class World:
    samples: dict[str, pd.DataFrame]  # serving_samples per model: QUALITY columns + feature "x"
    topline: pd.DataFrame
    experiments: pd.DataFrame


def world(incident: str = "none", seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    exp = experiments(incident)
    hours = pd.date_range(START, periods=DAYS * 24, freq="h")
    end = hours[-1] + pd.Timedelta("1h")
    samples, toplines = {}, []
    for model, segment in [("m1", "us"), ("m2", "us"), ("m3", "eu")]:
        ts = pd.Series(np.repeat(hours, PER_HOUR)
                       + pd.to_timedelta(rng.integers(0, 3600, len(hours) * PER_HOUR), unit="s"))
        # a daily cycle in the inputs so quality is seasonal too
        x = rng.standard_normal(len(ts)) + 0.3 * np.sin(2 * np.pi * ts.dt.hour.to_numpy() / 24)
        snapshot = _snapshot_at(exp, model, ts, rng)
        served = x.copy()
        slope = np.full(len(ts), 1.5)
        if model == "m1" and incident == "features":
            served[(ts >= ONSET).to_numpy()] = 0.0
        if model == "m1" and incident in ("bad_snapshot", "traffic_ramp"):
            slope[snapshot == "m1-s3"] = 0.3
        if model == "m3":
            label = 2 * x + rng.standard_normal(len(ts))
            prediction = 2 * served
            # the outcome users see: the expected squared error
            outcome = (prediction - 2 * x) ** 2 / 4
        else:
            truth = 1 / (1 + np.exp(-1.5 * x))
            label = (rng.random(len(ts)) < truth).astype(float)
            prediction = 1 / (1 + np.exp(-slope * served))
            if model == "m1" and incident == "nan_snapshot":
                prediction[(snapshot == "m1-s3") & (served > 1)] = np.nan
            p = np.clip(np.nan_to_num(prediction, nan=0.5), 1e-4, 1 - 1e-4)
            outcome = np.where(np.isnan(prediction), 3.0,
                               -(truth * np.log(p) + (1 - truth) * np.log1p(-p)))
        label[(ts >= end - LABEL_DELAY).to_numpy()] = np.nan
        samples[model] = pd.DataFrame({
            "ts": ts, "snapshot_id": snapshot,
            "request_id": [f"{model}-{i}" for i in range(len(ts))],
            "segment": segment, "prediction": prediction, "label": label,
            "x": served.astype(np.float32),
        }).sort_values("ts", ignore_index=True)
        toplines.append(pd.DataFrame({"ts": ts.dt.floor("h"), "segment": segment,
                                      "outcome": outcome}))
    return World(samples, _topline(pd.concat(toplines), rng), exp)


def _topline(outcomes: pd.DataFrame, rng) -> pd.DataFrame:
    """Hourly ``engagement`` per segment, falling with the mean served loss, with a daily cycle."""
    hourly = outcomes.groupby(["ts", "segment"], as_index=False)["outcome"].mean()
    season = 1 + 0.2 * np.sin(2 * np.pi * hourly["ts"].dt.hour.to_numpy() / 24)
    noise = 1 + 0.003 * rng.standard_normal(len(hourly))
    return hourly.assign(product="feed", metric="engagement",
                         value=100 * season * (1.6 - hourly["outcome"]) * noise
                         )[["ts", "product", "segment", "metric", "value"]]
