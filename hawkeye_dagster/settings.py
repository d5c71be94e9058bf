"""Configuration from the environment, with the embedded demo as the default.

``HAWKEYE_LAKE`` (a lake path or URL) or ``HAWKEYE_SQL_URL`` (a SQLAlchemy
URL) selects the telemetry source (contract section 4); with neither set the
demo lake under ``HAWKEYE_HOME`` (default ``./data``) is used.
``HAWKEYE_STORAGE`` overrides where the project's own outputs go,
``HAWKEYE_START_DATE`` the first day of the daily partitions (default: the
lake's first served day), and ``HAWKEYE_DAGSTER_URL`` the webserver that the
UI's links point at.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceConfig:
    lake: str | None
    sql_url: str | None


def home() -> Path:
    return Path(os.environ.get("HAWKEYE_HOME", "data")).expanduser().absolute()


def demo_lake() -> Path:
    return home() / "demo-lake"


def telemetry_source() -> SourceConfig:
    lake = os.environ.get("HAWKEYE_LAKE") or None
    sql_url = os.environ.get("HAWKEYE_SQL_URL") or None
    if lake and sql_url:
        raise ValueError("set HAWKEYE_LAKE or HAWKEYE_SQL_URL, not both")
    if not lake and not sql_url:
        lake = str(demo_lake())
    return SourceConfig(lake=lake, sql_url=sql_url)


def storage_root() -> Path:
    explicit = os.environ.get("HAWKEYE_STORAGE")
    return Path(explicit).expanduser().absolute() if explicit else home() / "outputs"


def start_date() -> str | None:
    """The first day of the daily partitions when set by hand (``YYYY-MM-DD``), else ``None``."""
    return os.environ.get("HAWKEYE_START_DATE") or None


def dagster_url() -> str:
    """The Dagster webserver that links in the assets' metadata open (the demo's by default)."""
    return (os.environ.get("HAWKEYE_DAGSTER_URL") or "http://localhost:3000").rstrip("/")


def redact_url(url: str) -> str:
    """A SQLAlchemy URL with its password hidden, for logs and the UI."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


_UNSAFE = re.compile(r"[\\/\x00]|^\.\.?$")


def safe_path_part(part: str) -> str:
    """One path component from an id (ids may hold spaces, dots, quotes, never ``/``).

    Refuses separators and ``.``/``..`` so no id can escape the storage root.
    """
    if not part or _UNSAFE.search(part):
        raise ValueError(f"unsafe path component {part!r}")
    return part
