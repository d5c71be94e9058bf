"""Snapshot weights opened from ``.pt2`` files (or already open) and compared.

:func:`weight_diff` and :func:`weight_change_history` take paths or open
:class:`~hawkeye_dagster.snapshot_io.SnapshotWeights` (archives checked by
:func:`~hawkeye_dagster.snapshot_io.check_archive`, nothing unpickled), open what needs
opening, and hand the weights to the pure comparison of
:mod:`hawkeye_dagster.analysis.weight_diff`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from os import PathLike

import pandas as pd

from hawkeye_dagster.analysis.weight_diff import Z_THRESHOLD, change_history, compare_weights
from hawkeye_dagster.snapshot_io import SnapshotWeights

Source = str | PathLike | SnapshotWeights


@contextmanager
def opened(*sources: Source | None) -> Iterator[list[SnapshotWeights | None]]:
    """The sources as :class:`SnapshotWeights` (checked archives), closing those opened here."""
    with ExitStack() as stack:
        yield [s if s is None or isinstance(s, SnapshotWeights)
               else stack.enter_context(SnapshotWeights(s)) for s in sources]


def weight_change_history(stable: Sequence[Source]) -> pd.DataFrame:
    """:func:`~hawkeye_dagster.analysis.weight_diff.change_history` of ``.pt2`` snapshots of one
    model (paths or open :class:`SnapshotWeights`), oldest first."""
    if len(stable) < 2:
        return change_history([])
    with opened(*stable) as readers:
        return change_history(readers)


def weight_diff(current: Source, reference: Source | None,
                history: pd.DataFrame | None = None, *,
                z_threshold: float = Z_THRESHOLD) -> pd.DataFrame:
    """:func:`~hawkeye_dagster.analysis.weight_diff.compare_weights` of the ``.pt2`` snapshot
    under diagnosis against the latest operationally stable one (``None``: there is none),
    each a path or an open :class:`SnapshotWeights`; ``history`` is
    :func:`weight_change_history` of the stable snapshots."""
    with opened(current, reference) as (snapshot, ref):
        return compare_weights(snapshot, ref, history, z_threshold=z_threshold)
