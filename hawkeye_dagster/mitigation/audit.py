"""The audit trail of pauses and resumes, in any SQL database SQLAlchemy reaches.

One row per thing done (or deliberately not done) to a pipeline for an
incident: what it was before, why, when, by whom and with what outcome. The
trail is also the state that makes pausing idempotent and resuming exact.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import sqlalchemy as sa

AUDIT_TABLE = "hawkeye_pause_audit"
#: outcomes that leave a pause in force for the incident (``recorded``: no control, paused by hand)
HOLDING = ("paused", "recorded")
#: the outcome written ahead of asking an orchestrator to pause: until the pause's own entry
#: follows, the pause may or may not have been applied (the run asking was killed)
INTENT = "pausing"
#: outcomes of a pause attempt that may have been applied without its answer reaching us
UNSETTLED = ("failed", INTENT)

_metadata = sa.MetaData()
_audit = sa.Table(
    AUDIT_TABLE, _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("incident", sa.String, nullable=False, index=True),
    sa.Column("pipeline_id", sa.String, nullable=False),
    sa.Column("orchestrator", sa.String),
    sa.Column("target", sa.String),
    sa.Column("action", sa.String, nullable=False),        # pause | resume
    sa.Column("outcome", sa.String, nullable=False),       # pausing, paused, recorded, dry_run, ...
    sa.Column("state_before", sa.String),
    sa.Column("reason", sa.Text),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String, nullable=False),
)
AUDIT_COLUMNS = tuple(c.name for c in _audit.columns if c.name != "id")


class AuditStore:
    """The audit table at a SQLAlchemy ``url`` (created on first use)."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url)
        _metadata.create_all(self.engine)

    def record(self, entries: Iterable[dict]) -> None:
        """Append entries (dicts with :data:`AUDIT_COLUMNS`) in one transaction."""
        rows = [{k: e.get(k) for k in AUDIT_COLUMNS} for e in entries]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(_audit.insert(), rows)

    def write_ahead(self, entry: dict) -> int:
        """Record ``entry`` as an :data:`INTENT` (before the orchestrator is asked); its row id,
        for :meth:`settle`."""
        row = {k: entry.get(k) for k in AUDIT_COLUMNS} | {"outcome": INTENT}
        with self.engine.begin() as conn:
            return conn.execute(_audit.insert().returning(_audit.c.id), row).scalar_one()

    def settle(self, intent: int | None, entry: dict) -> None:
        """``entry``'s outcome in place of the intent row ``intent`` (appended when ``None``),
        so a pause that completed is one row, and one cut short stays an :data:`INTENT`."""
        row = {k: entry.get(k) for k in AUDIT_COLUMNS}
        with self.engine.begin() as conn:
            if intent is None:
                conn.execute(_audit.insert(), row)
            else:
                conn.execute(_audit.update().where(_audit.c.id == intent), row)

    def history(self, incident: str | None = None) -> pd.DataFrame:
        """Every entry (of one incident), oldest first, ``ts`` as UTC."""
        query = sa.select(_audit).order_by(_audit.c.id)
        if incident is not None:
            query = query.where(_audit.c.incident == incident)
        with self.engine.connect() as conn:
            frame = pd.read_sql(query, conn)
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        return frame

    def holding(self, incident: str) -> pd.DataFrame:
        """The incident's pauses still in force: per pipeline, its last entry when it holds.

        A failed resume does not end a pause (the pipeline is still paused).
        """
        return _holding(self.history(incident))

    def interrupted(self, incident: str) -> pd.Series:
        """The incident's pauses that failed, or were cut short (an :data:`INTENT` entry with
        nothing after it), after the state was read: ``state_before`` by ``pipeline_id``.

        The orchestrator may have applied such a pause though its answer was lost, so a
        retry that finds the pipeline paused treats it as this incident's pause. Only the
        failed pauses since the pipeline's last other entry count, and the earliest of them
        holds the state from before the incident touched it.
        """
        return _interrupted(self.history(incident))

    def pause_state(self, incident: str) -> tuple[pd.DataFrame, pd.Series]:
        """:meth:`holding` and :meth:`interrupted` from one read of the incident's history."""
        history = self.history(incident)
        return _holding(history), _interrupted(history)


def _holding(history: pd.DataFrame) -> pd.DataFrame:
    failed_resume = (history["action"] == "resume") & (history["outcome"] == "failed")
    last = history[~failed_resume].drop_duplicates("pipeline_id", keep="last")
    return last[(last["action"] == "pause") & last["outcome"].isin(HOLDING)].reset_index(
        drop=True)


def _interrupted(history: pd.DataFrame) -> pd.Series:
    failed = (history["action"] == "pause") & history["outcome"].isin(UNSETTLED)
    # per pipeline, how many entries that are not failed pauses come later: 0 = since the last
    settled = (~failed)[::-1].groupby(history["pipeline_id"][::-1]).cumsum()[::-1]
    since = history[failed & (settled == 0) & history["state_before"].notna()]
    return since.drop_duplicates("pipeline_id").set_index("pipeline_id")["state_before"]
