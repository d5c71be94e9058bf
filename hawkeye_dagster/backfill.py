"""``hawkeye-dagster backfill``: rerun a range of history as a Dagster asset backfill.

The dynamic partitions the lake implies (models, snapshots, training partitions, stored
incidents) are registered first (:func:`~hawkeye_dagster.assets.partitions.lake_partition_keys`),
so nothing waits for a sensor tick. Then one asset backfill over the selected assets and
partitions is added to the instance (``DAGSTER_HOME``), exactly what the UI's backfill
dialog adds: it shows on the Backfills page and the backfill daemon runs it, parents before
children, one run per range where the asset's ``BackfillPolicy`` is single-run. With
``--wait`` and no daemon heartbeating, this process drives the same daemon iterations (the
backfill's and, for a queued run coordinator, the run queue's) until the backfill is done.

The backfill's run config names the lake, so whichever daemon executes it reads that lake,
and runs its steps in one process (they are seconds each).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence

import dagster as dg

from hawkeye_dagster.errors import HawkeyeError

GROUPS = ("features", "lineage", "snapshots", "training")
#: what a backfill asks the daemon to execute while it is in progress
_IN_PROGRESS = ("REQUESTED", "CANCELING", "FAILING")
#: seconds between two looks at the backfill (and, in-process, two daemon iterations)
POLL_S = 1.0
BACKFILL_TAG = "hawkeye/backfill"


class BadOption(HawkeyeError):
    """Bad input, naming the option."""


def parse_day(value: str) -> dt.date:
    """An option's ``YYYY-MM-DD`` (argparse names the option when this raises)."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day (YYYY-MM-DD)") from None


def use_source(lake: str | None, sql_url: str | None) -> None:
    """Point the definitions (loaded after this) and the code servers this process starts at
    the lake."""
    os.environ.pop("HAWKEYE_LAKE" if sql_url else "HAWKEYE_SQL_URL", None)
    os.environ["HAWKEYE_SQL_URL" if sql_url else "HAWKEYE_LAKE"] = sql_url or lake


def register_lake(instance: dg.DagsterInstance, reader) -> dict[str, list[str]]:
    """Register the lake's dynamic partitions (and the stored incidents) on ``instance``;
    returns the keys added. Snapshots are left out: the publication sensor takes a
    registered snapshot for one already launched, so a snapshot is registered only by the
    backfill that diagnoses it (:func:`backfill_command`) or by the sensor's own tick."""
    from hawkeye_dagster import settings
    from hawkeye_dagster.assets.partitions import (
        lake_partition_keys,
        register_partitions,
        snapshot_partitions,
    )
    from hawkeye_dagster.incidents import INCIDENTS_DIR

    keys = lake_partition_keys(reader, settings.storage_root() / INCIDENTS_DIR)
    keys.pop(snapshot_partitions.name)
    return register_partitions(instance, keys)


def targets(reader, groups: Sequence[str], start: dt.date | None,
            end: dt.date | None, models: Sequence[str] | None) -> dict[dg.AssetKey, list[str]]:
    """The partition keys to backfill per asset. The features: statistics and drift of every
    (day, model), one run per range; ``feature_reference`` is not targeted: it is the baseline
    every day is judged by, not part of a day, and a model without one gets it computed first
    by the statistics run (recorded as its materialization). Targeting it would split the
    range into one run per model, as each reference lands. Snapshots: those published in the
    range; training partitions: those read by runs started in it."""
    import pandas as pd

    from hawkeye_dagster.analysis.training_diagnosis import partition_key
    from hawkeye_dagster.assets import features, lineage, snapshots, training
    from hawkeye_dagster.assets.partitions import daily_partitions

    if start is None or end is None:
        raise BadOption(f"--{'start' if start is None else 'end'}: required (a day, YYYY-MM-DD)")
    known = sorted(reader.read("models", columns=["model_id"])["model_id"].unique())
    unknown = sorted(set(models or ()) - set(known))
    if unknown:
        raise BadOption(f"--models: {', '.join(unknown)} not in the lake's models table "
                        f"(it has {', '.join(known)})")
    models = list(models or known)
    first = dt.date.fromisoformat(daily_partitions.get_first_partition_key())
    if start < first:
        raise BadOption(f"--start: {start} is before the first daily partition, {first}")
    if end < start:
        raise BadOption(f"--end: {end} is before --start {start}")
    days = [d.strftime("%Y-%m-%d") for d in pd.date_range(start, end, freq="D")]
    window = (pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC") + pd.Timedelta("1D"))

    def within(ts: pd.Series) -> pd.Series:
        return (ts >= window[0]) & (ts < window[1])

    found: dict[dg.AssetKey, list[str]] = {}
    if "features" in groups:
        day_keys = [str(dg.MultiPartitionKey({"date": d, "model": m}))
                    for m in models for d in days]
        found[features.feature_stats.key] = found[features.feature_drift.key] = day_keys
    if "lineage" in groups:
        found[lineage.lineage_node_changepoints.key] = days
    if "snapshots" in groups:
        published = reader.read("snapshots", columns=["snapshot_id", "model_id", "published_at"])
        published = published[within(published["published_at"])
                              & published["model_id"].isin(models)]
        ids = sorted(published["snapshot_id"].unique())
        for asset in snapshots.SNAPSHOT_DIAGNOSTICS:
            found[asset.key] = ids
    if "training" in groups:
        runs = reader.read("training_runs", columns=["model_id", "dataset_id", "partitions",
                                                     "started_at"])
        read = runs[within(runs["started_at"]) & runs["model_id"].isin(models)]
        read = read.explode("partitions").dropna(subset=["partitions"])
        found[training.training_partition_checks.key] = sorted(
            set(partition_key(read["dataset_id"], read["partitions"])))
    return {key: keys for key, keys in found.items() if keys}


def launch(instance: dg.DagsterInstance, asset_graph, keys: dict[dg.AssetKey, list[str]],
           run_config: dict, title: str) -> str:
    """Add the asset backfill of ``keys`` to the instance, as the UI does; its id."""
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.execution.backfill import PartitionBackfill

    subset = AssetGraphSubset(partitions_subsets_by_asset_key={
        key: asset_graph.get(key).partitions_def.subset_with_partition_keys(partitions)
        for key, partitions in keys.items()})
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=uuid.uuid4().hex[:8], backfill_timestamp=time.time(),
        tags={BACKFILL_TAG: "cli"}, dynamic_partitions_store=instance,
        asset_graph_subset=subset, title=title, description=None, run_config=run_config)
    instance.add_backfill(backfill)
    return backfill.backfill_id


def daemon_running(instance: dg.DagsterInstance) -> bool:
    """Whether a backfill daemon heartbeats on this instance."""
    from dagster._daemon.controller import get_daemon_statuses

    return bool(get_daemon_statuses(instance, ["BACKFILL"], ignore_errors=True)
                ["BACKFILL"].healthy)


def progress_counts(instance: dg.DagsterInstance, backfill_id: str, asset_graph
                    ) -> tuple[str, int, int, int]:
    """``(status, done, failed, total)`` asset partitions of a backfill."""
    backfill = instance.get_backfill(backfill_id)
    data = backfill.get_asset_backfill_data(asset_graph)
    return (backfill.status.value, *(
        subset.num_partitions_and_non_partitioned_assets for subset in
        (data.materialized_subset, data.failed_and_downstream_subset, data.target_subset)))


def wait(instance: dg.DagsterInstance, backfill_id: str, asset_graph,
         progress: Callable[[str], None]) -> tuple[str, int, int, int]:
    """Until the backfill is done: under the running daemon, or by driving its iterations
    here. Progress lines go to ``progress`` whenever the counts change."""
    if daemon_running(instance):
        progress("a daemon is running this instance: it executes the backfill")
        return _poll(lambda: None, instance, backfill_id, asset_graph, progress)
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster._daemon.controller import create_daemon_grpc_server_registry
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    progress("no daemon is running this instance: executing the backfill here")
    logger = logging.getLogger("hawkeye_dagster.backfill.daemon")
    target = ModuleTarget(module_name="hawkeye_dagster.definitions", attribute=None,
                          working_directory=os.getcwd(), location_name="hawkeye")
    queued = isinstance(instance.run_coordinator, QueuedRunCoordinator)
    with create_daemon_grpc_server_registry(instance) as servers, \
            WorkspaceProcessContext(instance, target, grpc_server_registry=servers) as context, \
            QueuedRunCoordinatorDaemon(interval_seconds=POLL_S) as queue:
        def iterate() -> None:
            list(execute_backfill_iteration(context, logger))
            if queued:
                list(queue.run_iteration(context))

        return _poll(iterate, instance, backfill_id, asset_graph, progress)


def _poll(iterate: Callable[[], None], instance, backfill_id, asset_graph, progress):
    last = None
    while True:
        iterate()
        counts = progress_counts(instance, backfill_id, asset_graph)
        if counts != last:
            status, done, failed, total = counts
            progress(f"backfill {backfill_id}: {done}/{total} partitions done, {failed} "
                     f"failed ({status.lower()})")
            last = counts
        if counts[0] not in _IN_PROGRESS:
            return counts
        time.sleep(POLL_S)


def backfill_command(*, lake: str | None, sql_url: str | None, start: dt.date | None,
                     end: dt.date | None,
                     models: Sequence[str] | None, assets: str, wait_done: bool,
                     register_only: bool, progress: Callable[[str], None]) -> int:
    """The command: 0 when launched (with ``--wait``: when every partition succeeded), 1 when
    one failed, 2 for bad input."""
    use_source(lake, sql_url)
    from dagster._core.storage.dagster_run import RunsFilter

    from hawkeye_dagster.definitions import defs
    from hawkeye_dagster.lake.open import open_lake

    reader = open_lake(lake=lake, sql_url=sql_url)
    with dg.DagsterInstance.get() as instance:
        added = register_lake(instance, reader)
        progress("registered partitions: " + ", ".join(
            f"{len(keys)} {name}" for name, keys in added.items()))
        if register_only:
            return 0
        groups = GROUPS if assets == "all" else (assets,)
        try:
            keys = targets(reader, groups, start, end, models)
        except BadOption as err:
            print(f"hawkeye-dagster backfill: {err}", file=sys.stderr)
            return 2
        if not keys:
            progress(f"nothing to backfill for {assets} from {start} to {end}")
            return 0
        from hawkeye_dagster.assets.partitions import register_partitions, snapshot_partitions
        from hawkeye_dagster.assets.snapshots import SNAPSHOT_DIAGNOSTICS

        register_partitions(instance, {snapshot_partitions.name: keys.get(
            SNAPSHOT_DIAGNOSTICS[0].key, [])})  # the snapshots this backfill diagnoses
        run_config = {"execution": {"config": {"in_process": {}}},
                      "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                      "resources": {"telemetry": {"config": {"lake": lake, "sql_url": sql_url}}}}
        asset_graph = defs.resolve_asset_graph()
        backfill_id = launch(instance, asset_graph, keys, run_config,
                             title=f"hawkeye {assets} {start}...{end}")
        total = sum(len(k) for k in keys.values())
        progress(f"launched backfill {backfill_id}: {total} partitions of "
                 f"{', '.join(k.to_user_string() for k in keys)} (Backfills page: "
                 f"/runs/b/{backfill_id})")
        if not wait_done:
            if not daemon_running(instance):
                progress("no daemon is running: start `dagster dev` (or `dagster-daemon run`) "
                         "on this DAGSTER_HOME, or pass --wait")
            return 0
        started = time.monotonic()
        status, done, failed, total = wait(instance, backfill_id, asset_graph, progress)
        runs = instance.get_runs(filters=RunsFilter.for_backfill(backfill_id))
        succeeded = sum(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        progress(f"backfill {backfill_id} {status.lower()} in {time.monotonic() - started:.0f} s: "
                 f"{done}/{total} partitions done, {failed} failed; {len(runs)} runs, "
                 f"{succeeded} succeeded")
        return 0 if status == "COMPLETED_SUCCESS" and not failed else 1
