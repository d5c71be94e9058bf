"""The registered branches: the built-in workflows, then those outside packages declare.

An outside package registers a branch with one entry point in the group
``hawkeye_dagster.branches``; its value names a :class:`~hawkeye_dagster.triage.branch.Branch`
object (or a function returning one or a list of them)::

    [project.entry-points."hawkeye_dagster.branches"]
    serving_errors = "hawkeye_serving_errors:branch"

Built-in branches run first, in the tree's order; outside ones follow, by
name. ``HAWKEYE_BRANCHES_DISABLED`` (comma-separated branch names, or ``*``
for every outside one) leaves branches out, e.g. to compare reports with and
without one. A broken registration is refused with an error that names the
entry point.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from hawkeye_dagster.errors import HawkeyeError
from hawkeye_dagster.triage.branch import Branch

GROUP = "hawkeye_dagster.branches"
DISABLED = "HAWKEYE_BRANCHES_DISABLED"


class BranchRegistrationError(HawkeyeError):
    """An entry point of :data:`GROUP` that does not give usable branches."""


def branches() -> tuple[Branch, ...]:
    """Every registered branch that is not disabled: built-in ones, then outside ones."""
    disabled = {n.strip() for n in os.environ.get(DISABLED, "").split(",") if n.strip()}
    outside = () if "*" in disabled else _outside()
    return tuple(b for b in (*built_in(), *outside) if b.name not in disabled)


def for_stage(stage: str, registered: Iterable[Branch]) -> list[Branch]:
    return [b for b in registered if stage in b.stages]


@cache
def built_in() -> tuple[Branch, ...]:
    from hawkeye_dagster.triage import feature_branch, snapshot_branch, topline_branch

    return (*topline_branch.BRANCHES, *snapshot_branch.BRANCHES, *feature_branch.BRANCHES)


@cache
def _outside() -> tuple[Branch, ...]:
    found: list[Branch] = []
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        found.extend(load_entry_point(point))
    names = [b.name for b in (*built_in(), *found)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BranchRegistrationError(f"entry points of {GROUP!r} register branch names that "
                                      f"are taken: {', '.join(repeated)}")
    return tuple(sorted(found, key=lambda b: b.name))


def load_entry_point(point: EntryPoint) -> list[Branch]:
    where = f"entry point {point.name!r} ({point.value}) of group {GROUP!r}"
    try:
        value = point.load()
    except Exception as error:  # an outside package's import error, whatever it is
        raise BranchRegistrationError(f"{where} cannot be loaded: {error}") from error
    if callable(value) and not isinstance(value, Branch):
        value = value()
    loaded = list(value) if isinstance(value, (list, tuple)) else [value]
    for candidate in loaded:
        problem = _problem(candidate)
        if problem:
            raise BranchRegistrationError(f"{where}: {problem}")
    return loaded


def _problem(candidate) -> str | None:
    if not isinstance(candidate, Branch):
        return (f"{candidate!r} is not a branch (it needs a name, a tuple of stages and "
                "run(context, visit))")
    if not isinstance(candidate.name, str) or not candidate.name:
        return "a branch's name must be a non-empty string"
    if not isinstance(candidate.stages, tuple) or not candidate.stages or \
            not all(isinstance(s, str) for s in candidate.stages):
        return f"branch {candidate.name!r}: stages must be a non-empty tuple of stage names"
    return None
