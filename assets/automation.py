"""When assets materialize by themselves: the automation conditions the automation sensor of
:mod:`hawkeye_dagster.definitions` evaluates.

The telemetry tables are external assets that Dagster never sees materialize, so every
condition ignores them as dependencies (otherwise "all deps updated" or "no dep missing"
could never hold). The conditions of the project:

- :data:`ONCE`: a partition is materialized once, when it is first seen missing: at the
  sensor's first tick for what the lake already holds, then for each new model. A failed
  partition is not retried tick after tick: a person looks at it, or a backfill reruns it;
- :data:`ONCE_SERVED_DAYS`: the same for daily partitions, counting only the days from the
  lake's first served day to its last (at most :data:`HISTORY_DAYS` of them) as the
  definitions loaded them, so the demo's days fill by themselves and no empty day does;
- :func:`refresh`: one of those, then again on each tick of a cron schedule (daily
  partitions: the latest two days, today's still filling and yesterday's last hours);
- :data:`FOLLOW`: eager over the same days: after its upstream partitions change.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from hawkeye_dagster.assets.partitions import LAKE_DAYS, daily_partitions
from hawkeye_dagster.assets.telemetry import TELEMETRY_GROUP

AC = dg.AutomationCondition
TELEMETRY = dg.AssetSelection.groups(TELEMETRY_GROUP)
#: days of history the automation backfills by itself (older days: a backfill in the UI)
HISTORY_DAYS = 90
_DAY = dt.timedelta(days=1)


def lake_window(days: tuple[str, str] | None, latest_end: dt.datetime,
                max_days: int = HISTORY_DAYS) -> dg.AutomationCondition:
    """The daily partitions from the lake's first served day (or ``max_days`` before its last)
    to its last, for a partitions definition whose latest partition ends at ``latest_end``.

    Dagster's windows are relative to the latest partition, so they keep their length while
    time passes; it is the partitions first seen missing in them that the automation fills.
    Without the lake's days, the last ``max_days``.
    """
    if days is None:
        return AC.in_latest_time_window(max_days * _DAY).with_label(f"last {max_days} days")
    first, last = (dt.datetime.fromisoformat(d).replace(tzinfo=dt.timezone.utc) for d in days)
    first = max(first, last - (max_days - 1) * _DAY)
    window = AC.in_latest_time_window(latest_end - first)
    after = latest_end - (last + _DAY)
    if after > dt.timedelta(0):
        window = window & ~AC.in_latest_time_window(after)
    return window.with_label(f"served days {first:%Y-%m-%d} to {last:%Y-%m-%d}")


LAKE_WINDOW = lake_window(LAKE_DAYS, daily_partitions.get_last_partition_window().end)

ONCE = AC.newly_missing().with_label("once, when missing")

ONCE_SERVED_DAYS = (LAKE_WINDOW & AC.newly_missing()).with_label("once per served day")

FOLLOW = AC.eager().replace("in_latest_time_window",
                            LAKE_WINDOW | AC.in_latest_time_window(2 * _DAY)).ignore(TELEMETRY)


def refresh(cron: str, first: dg.AutomationCondition = ONCE) -> dg.AutomationCondition:
    """``first``, and again on each tick of ``cron`` (daily partitions: the latest two days)."""
    tick = (AC.in_latest_time_window(2 * _DAY)
            & AC.cron_tick_passed(cron).since_last_handled()
            & ~AC.in_progress()).with_label(f"refresh on {cron}")
    return first | tick
