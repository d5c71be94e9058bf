"""Dagster resources: where telemetry is read from and where the project's own outputs go.

With no configuration, both point at the embedded demo (see :mod:`hawkeye_dagster.settings`).
"""

from __future__ import annotations

import io
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import PrivateAttr

from hawkeye_dagster import settings
from hawkeye_dagster.atomic import write_atomically
from hawkeye_dagster.errors import StorageWriteError
from hawkeye_dagster.lake.reader import TelemetryReader
from hawkeye_dagster.mitigation.audit import AuditStore
from hawkeye_dagster.mitigation.controls import AirflowControl, DagsterControl, PipelineControl
from hawkeye_dagster.mitigation.planning import PausePolicy


class TelemetrySource(dg.ConfigurableResource):
    """The telemetry lake: a Parquet lake path/URL or a SQLAlchemy URL (exactly one), and the
    OpenLineage events whose lineage joins the lake's for every reader of it (optional; see
    :mod:`hawkeye_dagster.lake.openlineage`)."""

    lake: str | None = None
    sql_url: str | None = None
    openlineage: str | None = None
    """OpenLineage events: a file or folder (unset: ``HAWKEYE_OPENLINEAGE``, if set)."""
    openlineage_lake_namespaces: list[str] | None = None
    """Namespaces whose datasets are the lake's nodes of the same name (unset:
    ``HAWKEYE_OPENLINEAGE_LAKE_NAMESPACES``, comma-separated)."""

    _reader: TelemetryReader | None = PrivateAttr(default=None)

    def reader(self) -> TelemetryReader:
        """The reader, opened once per resource instance; its lineage tables hold the
        OpenLineage events' lineage too when they are configured."""
        if self._reader is None:
            from hawkeye_dagster.lake.open import open_lake

            self._reader = open_lake(lake=self.lake, sql_url=self.sql_url)
            events = self.openlineage or os.environ.get("HAWKEYE_OPENLINEAGE")
            if events:
                from hawkeye_dagster.lake.openlineage import DatasetMapping, OpenLineageSource

                namespaces = self.openlineage_lake_namespaces
                if namespaces is None:
                    namespaces = os.environ.get("HAWKEYE_OPENLINEAGE_LAKE_NAMESPACES", "")
                    namespaces = namespaces.split(",")
                mapping = DatasetMapping(tuple(n.strip() for n in namespaces if n.strip()))
                self._reader = self._reader.with_lineage(OpenLineageSource(events, mapping))
        return self._reader

    @property
    def location(self) -> str:
        return self.lake or settings.redact_url(self.sql_url or "")


class HawkeyeStorage(dg.ConfigurableResource):
    """A folder for the project's own outputs (statistics, reports, plots, alerts).

    Writes are atomic (:func:`~hawkeye_dagster.atomic.write_atomically`) so a failed or
    killed run never leaves a half-written file that a later run or sensor would read.
    """

    root: str

    @cached_property
    def _root(self) -> Path:
        return Path(self.root).expanduser()

    def path(self, *parts: str) -> Path:
        """The path of an output; its parent folders are created."""
        target = self._root.joinpath(*(settings.safe_path_part(p) for p in parts))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageWriteError(str(target), exc.strerror or str(exc)) from exc
        return target

    def exists(self, *parts: str) -> bool:
        return self.path(*parts).exists()

    def write_bytes(self, data: bytes, *parts: str) -> Path:
        return write_atomically(self.path(*parts), data)

    def write_parquet(self, frame: pd.DataFrame, *parts: str) -> Path:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return self.write_bytes(buf.getvalue(), *parts)

    def read_parquet(self, *parts: str) -> pd.DataFrame:
        return pd.read_parquet(self.path(*parts))

    def write_json(self, obj: Any, *parts: str) -> Path:
        return self.write_bytes(json.dumps(obj, indent=2, default=str).encode(), *parts)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.path(*parts).read_text())


class MitigationSettings(dg.ConfigurableResource):
    """Where pipelines are paused, where pauses are recorded, and how boldly.

    ``dagster_url``: the Dagster webserver whose schedules/sensors drive
    ``dagster`` pipelines (e.g. ``http://localhost:3000``; ``dagster_token`` for
    Dagster+); ``airflow_url`` for ``airflow`` pipelines, with a user/password
    (Airflow 3 trades them for a token, Airflow 2 takes them as basic auth) or
    an ``airflow_token`` issued beforehand, and ``airflow_api`` (``v1``/``v2``)
    where probing the server should not decide; without a URL, such pauses are
    recorded for a person to carry out. ``audit_url``: SQLAlchemy URL of the
    audit table (default: a SQLite file under storage).
    """

    dagster_url: str | None = None
    dagster_token: str | None = None
    airflow_url: str | None = None
    airflow_username: str | None = None
    airflow_password: str | None = None
    airflow_token: str | None = None
    airflow_api: str | None = None
    audit_url: str | None = None
    auto_pause: bool = False
    min_confidence: float = 0.8
    max_pipelines: int = 3

    @classmethod
    def from_env(cls) -> "MitigationSettings":
        """From ``HAWKEYE_DAGSTER_URL`` (``_TOKEN``), ``HAWKEYE_AIRFLOW_URL`` (``_USERNAME``,
        ``_PASSWORD``, ``_TOKEN``, ``_API``), ``HAWKEYE_AUDIT_URL`` and ``HAWKEYE_AUTO_PAUSE``
        (``1`` to allow automatic pausing)."""
        env = os.environ.get
        return cls(dagster_url=env("HAWKEYE_DAGSTER_URL") or None,
                   dagster_token=env("HAWKEYE_DAGSTER_TOKEN") or None,
                   airflow_url=env("HAWKEYE_AIRFLOW_URL") or None,
                   airflow_username=env("HAWKEYE_AIRFLOW_USERNAME") or None,
                   airflow_password=env("HAWKEYE_AIRFLOW_PASSWORD") or None,
                   airflow_token=env("HAWKEYE_AIRFLOW_TOKEN") or None,
                   airflow_api=env("HAWKEYE_AIRFLOW_API") or None,
                   audit_url=env("HAWKEYE_AUDIT_URL") or None,
                   auto_pause=env("HAWKEYE_AUTO_PAUSE", "") in ("1", "true", "yes"))

    def controls(self) -> dict[str, PipelineControl]:
        controls: dict[str, PipelineControl] = {}
        if self.dagster_url:
            controls["dagster"] = DagsterControl(self.dagster_url, token=self.dagster_token)
        if self.airflow_url:
            controls["airflow"] = AirflowControl(
                self.airflow_url, username=self.airflow_username, password=self.airflow_password,
                token=self.airflow_token, api=self.airflow_api)
        return controls

    def audit(self, storage: HawkeyeStorage) -> AuditStore:
        return AuditStore(self.audit_url or f"sqlite:///{storage.path('mitigation', 'audit.sqlite')}")

    def policy(self, dry_run: bool) -> PausePolicy:
        return PausePolicy(dry_run=dry_run, auto=self.auto_pause,
                           min_confidence=self.min_confidence, max_pipelines=self.max_pipelines)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources bound from the environment (``HAWKEYE_LAKE`` / ``HAWKEYE_SQL_URL``)."""
    source = settings.telemetry_source()
    return {
        "telemetry": TelemetrySource(lake=source.lake, sql_url=source.sql_url),
        "storage": HawkeyeStorage(root=str(settings.storage_root())),
        "mitigation": MitigationSettings.from_env(),
    }
