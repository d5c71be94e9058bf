"""A snapshot's analyses over a lake: its weight change, its activations, its training run.

:func:`weight_change`, :func:`activation_check` and :func:`training_check` are the one
sequence of reads and calls that the snapshot assets (a step each, results stored) and
triage's snapshot branch (all in one go) share; the callers choose the inputs (stable
snapshots, served rows). :func:`~hawkeye_dagster.analysis.snapshot_report.build_report`
weighs what they find.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from hawkeye_dagster.analysis.activations import ActivationDiagnosis
    from hawkeye_dagster.analysis.training_diagnosis import PartitionDiagnosis, TrainingLineage
    from hawkeye_dagster.lake.reader import TelemetryReader


def weight_change(reader: TelemetryReader, artifacts: Mapping[str, str], snapshot_id: str,
                  stable: Sequence[str]) -> pd.DataFrame:
    """:func:`~hawkeye_dagster.analysis.weight_diff.compare_weights` of a snapshot against the last
    of its ``stable`` snapshots (oldest first), scored against their stable-to-stable history.

    ``artifacts`` maps snapshot ids to their ``snapshots.artifact``. Every archive is checked
    and streamed tensor by tensor (:func:`~hawkeye_dagster.snapshot_io.artifact_weights`).
    """
    from hawkeye_dagster.analysis.weight_diff import change_history, compare_weights
    from hawkeye_dagster.snapshot_io import artifact_weights

    with ExitStack() as stack:
        current, *history = [
            stack.enter_context(artifact_weights(reader, artifacts[s], snapshot_id=s))
            for s in [snapshot_id, *stable]]
        return compare_weights(current, history[-1] if history else None,
                               change_history(history))


def activation_check(reader: TelemetryReader, artifact: str, inputs: pd.DataFrame,
                     features: list[str], *, model_id: str,
                     snapshot_id: str) -> ActivationDiagnosis:
    """The snapshot's program (loaded through the archive checks) run on served ``inputs`` with
    every node captured (:func:`~hawkeye_dagster.analysis.activations.diagnose_activations`)."""
    from hawkeye_dagster.analysis.activations import diagnose_activations
    from hawkeye_dagster.snapshot_io import load_artifact

    program = load_artifact(reader, artifact, snapshot_id=snapshot_id)
    return diagnose_activations(program.module(), inputs[features].to_numpy(np.float32),
                                features, model_id=model_id)


@dataclass(frozen=True)
class TrainingCheck:
    """A snapshot's training run checked: its curves and its dataset partitions."""

    #: the run's ``training_metrics`` rows
    metrics: pd.DataFrame
    #: the run's row of :func:`~hawkeye_dagster.analysis.training_diagnosis.curve_checks`,
    #: ``None`` without metrics
    curve: dict | None
    #: its partitions against their neighbours and against ``serving``
    partitions: PartitionDiagnosis


def training_check(reader: TelemetryReader, lineage: TrainingLineage, features: list[str],
                   task: str, serving: pd.DataFrame) -> TrainingCheck:
    """The run's loss and gradient curves, and its partitions (read with their neighbours)
    against each other and against the ``serving`` rows (``features`` and ``label``)."""
    from hawkeye_dagster.analysis.training_diagnosis import (
        curve_checks, diagnose_partitions, neighbour_partitions)

    metrics = reader.read("training_metrics", equals={"training_run_id": lineage.training_run_id})
    curves = curve_checks(metrics)
    listing = reader.read("training_data", columns=["partition"],
                          equals={"dataset_id": lineage.dataset_id})["partition"].unique()
    train = reader.training_data(lineage.dataset_id,
                                 neighbour_partitions(listing, lineage.partitions),
                                 columns=["partition", "label", *features])
    return TrainingCheck(metrics, curves.iloc[0].to_dict() if len(curves) else None,
                         diagnose_partitions(train, lineage.partitions, serving, features, task,
                                             lineage.dataset_id))
