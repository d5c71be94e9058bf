"""Errors that name the bad input, so a user can go straight to it."""

from __future__ import annotations


class HawkeyeError(Exception):
    """Base class of every error the project raises on purpose."""


class ContractError(HawkeyeError):
    """Telemetry that breaks ``hawkeye-telemetry/1``.

    Carries the table, the file (or SQL table) and the column at fault so the
    message (and the CLI's one-line reason) points at the exact place.
    """

    def __init__(self, reason: str, *, table: str | None = None, file: str | None = None,
                 column: str | None = None):
        self.reason = reason
        self.table = table
        self.file = file
        self.column = column
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.table:
            where.append(f"table {self.table!r}")
        if self.file:
            where.append(f"file {self.file!r}")
        if self.column:
            where.append(f"column {self.column!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class BadSnapshotError(ContractError):
    """A snapshot artifact that is missing, truncated, not a torch.export program, or a pickle."""

    def __init__(self, reason: str, *, file: str, snapshot_id: str | None = None):
        self.snapshot_id = snapshot_id
        super().__init__(reason, table="snapshots", file=file, column="artifact")


class LineageCycleError(ContractError):
    """The lineage graph has a cycle; names the nodes on it."""

    def __init__(self, cycle: list[str]):
        # one rotation of the cycle, from its smallest id, whichever node it was found from
        start = cycle.index(min(cycle)) if cycle else 0
        self.cycle = cycle[start:] + cycle[:start]
        super().__init__("lineage graph has a cycle: " + " -> ".join(self.cycle + self.cycle[:1]),
                         table="lineage_edges", column="upstream_id")


class UnknownIdError(HawkeyeError):
    """An id given on the command line (snapshot, feature, product) that the lake does not have."""


class StorageWriteError(HawkeyeError):
    """An output that could not be written (folder unwritable, disk full): names the output.

    The file it would have replaced is left as it was, and no partial file is left beside it.
    """

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(f"cannot write {path}: {reason}")
