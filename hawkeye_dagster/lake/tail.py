"""Read the rows of a growing contract table that were not read before.

What sensors need: each tick, only what was appended since the last one, at a
cost that grows with the new rows and not with the table's history.

- Parquet lake: files are never rewritten in place, so the unit is the file.
  The table's folder is *listed* (names and modification times, no footer
  read) and only files not read yet are opened. Files may appear out of name
  order and a slow writer's file may show up after newer ones, so the cursor
  keeps a modification-time watermark plus the names of the files read within
  :data:`GRACE` of it: a file older than ``watermark - GRACE`` counts as read.
- SQL lake: the unit is the row. Rows with the time column at or after
  ``watermark - lookback`` are re-read and those already read (a digest of
  their key columns, kept for the rows inside the lookback) are dropped.

Either way the cursor holds a watermark and the items (files, row digests) of
one short window, so its size is bounded by the write rate, not the history.
A caller may take only part of what is new (a burst spread over ticks):
:meth:`Tail.advance` keeps the items it did not take unread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd

from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.parquet import ParquetLake
from hawkeye_dagster.lake.reader import TablePart, TelemetryReader, table_spec
from hawkeye_dagster.time_range import TimeRange

#: a Parquet file may become visible up to this long after a newer one (slow writers)
GRACE = pd.Timedelta(minutes=10)
#: a SQL row may be committed up to this long after a newer one
LOOKBACK = pd.Timedelta(hours=1)
#: the column of :attr:`Tail.rows` naming the item (file or row digest) each row came from
ITEM = "tail_item"


@dataclass
class TailCursor:
    """Where a tail of one table stands: ``mark`` is the watermark in ns since the epoch
    (file modification time for Parquet, the time column for SQL; ``None`` before the first
    read) and ``recent`` the items read within the grace/lookback window before it."""

    mark: int | None = None
    recent: list[str] = field(default_factory=list)

    def dump(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, text: str | None) -> "TailCursor":
        return cls(**json.loads(text)) if text else cls()


@dataclass
class Tail:
    """The unread rows of a table and what :meth:`advance` needs to move the cursor past them.

    Column :data:`ITEM` of ``rows`` names the item each row came from: its file's path
    inside the table folder, or its row digest.
    """

    rows: pd.DataFrame
    cursor: TailCursor
    #: every item in the window (watermark - slack onwards): item -> order in ns
    window: pd.Series
    #: the items of this read that were not read before
    unread: list[str]
    slack_ns: int

    def advance(self, keep: Iterable[str] = ()) -> TailCursor:
        """The cursor once the unread items, except ``keep`` (left for a later read), are taken.

        The watermark moves to the newest item taken, but never so far that an item kept
        falls out of the window.
        """
        unread = pd.Index(self.unread, dtype=object)
        is_kept = unread.isin(list(keep))
        taken, kept = unread[~is_kept], unread[is_kept]
        mark = self.cursor.mark
        if len(taken):
            newest = int(self.window[taken].max())
            if len(kept):
                newest = min(newest, int(self.window[kept].min()) + self.slack_ns)
            mark = newest if mark is None else max(mark, newest)
        inside = self.window.index[self.window >= (mark or 0) - self.slack_ns]
        read = inside[inside.isin(self.cursor.recent) | inside.isin(taken)]
        return TailCursor(mark, sorted(read))


def unread_rows(reader: TelemetryReader, table: str, cursor: TailCursor,
                columns: Sequence[str] | None = None, *, key: Sequence[str] | None = None,
                grace: pd.Timedelta = GRACE, lookback: pd.Timedelta = LOOKBACK) -> Tail:
    """The rows of ``table`` not read before ``cursor``.

    ``columns`` are read (``None``: all). ``key`` are the columns that identify a SQL row
    (default ``columns``); Parquet files need none. Nothing is read twice once its items
    are advanced past, and nothing is missed unless a file appears more than ``grace``
    (a row is committed more than ``lookback``) after a newer one.
    """
    if isinstance(reader, ParquetLake):
        return _unread_files(reader, table, cursor, columns, grace)
    return _unread_sql_rows(reader, table, cursor, columns, key or columns, lookback)


def _unread_files(reader: ParquetLake, table: str, cursor: TailCursor,
                  columns: Sequence[str] | None, grace: pd.Timedelta) -> Tail:
    files = reader.listed_files(table)
    window = pd.Series({name: mtime for name, mtime, _ in files}, dtype="int64")
    if cursor.mark is not None:
        window = window[window >= cursor.mark - grace.value]
    recent = set(cursor.recent)
    unread = [(name, part) for name, _, part in files
              if name in window.index and name not in recent]
    frames = [_read(reader, part, columns).assign(**{ITEM: name}) for name, part in unread]
    empty = pd.DataFrame(columns=[*(columns or table_spec(table).column_names), ITEM])
    rows = pd.concat([f for f in frames if len(f)] or [empty], ignore_index=True)
    return Tail(rows, cursor, window, [name for name, _ in unread], grace.value)


def _read(reader: ParquetLake, part: TablePart, columns: Sequence[str] | None) -> pd.DataFrame:
    data = reader.read_part(part, columns)
    missing = [c for c in columns or () if c not in data.column_names]
    if missing:
        raise ContractError("column missing from the file", table=part.table,
                            file=part.location, column=missing[0])
    return data.to_pandas()


def _unread_sql_rows(reader: TelemetryReader, table: str, cursor: TailCursor,
                     columns: Sequence[str] | None, key: Sequence[str] | None,
                     lookback: pd.Timedelta) -> Tail:
    time_column = table_spec(table).time_column
    since = (TimeRange(pd.Timestamp(cursor.mark - lookback.value, tz="UTC"))
             if cursor.mark is not None else None)
    wanted = None if columns is None else list(dict.fromkeys([*columns, *(key or ()),
                                                              time_column]))
    rows = reader.read(table, columns=wanted, time_range=since)
    digest = pd.util.hash_pandas_object(rows[list(key or rows.columns)], index=False)
    rows[ITEM] = digest.map("{:016x}".format).astype(str)
    order = rows[time_column].astype("datetime64[ns, UTC]").astype("int64")
    window = pd.Series(order.to_numpy(), index=rows[ITEM].to_numpy()).groupby(level=0).min()
    rows = rows[~rows[ITEM].isin(cursor.recent)].reset_index(drop=True)
    return Tail(rows, cursor, window, rows[ITEM].unique().tolist(), lookback.value)
