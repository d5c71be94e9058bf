"""The time-window value type every layer passes around: a half-open UTC interval.

:class:`TimeRange` is what readers filter on, analyses slice by and incidents carry;
:func:`as_utc` turns any timestamp a user or a table gives into a tz-aware UTC one.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: the one timestamp type frames carry (the lake casts every stored unit and zone to it), and
#: the type of a range's bounds
TIMESTAMP = pa.timestamp("ns", tz="UTC")


@dataclass(frozen=True)
class TimeRange:
    """A half-open UTC interval ``[start, end)``; ``None`` means unbounded."""

    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None

    @classmethod
    def of(cls, start=None, end=None) -> "TimeRange":
        return cls(as_utc(start), as_utc(end))

    def expression(self, column: str) -> pc.Expression | None:
        """The Arrow filter ``start <= column < end`` (``None`` when unbounded both ways)."""
        bounds = []
        if self.start is not None:
            start = pa.scalar(self.start.as_unit("ns").value, TIMESTAMP)
            bounds.append(pc.field(column) >= start)
        if self.end is not None:
            end = pa.scalar(self.end.as_unit("ns").value, TIMESTAMP)
            bounds.append(pc.field(column) < end)
        return functools.reduce(operator.and_, bounds) if bounds else None


def as_utc(value) -> pd.Timestamp | None:
    """A timestamp (string, datetime, Timestamp) in UTC; naive times are taken as UTC."""
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
