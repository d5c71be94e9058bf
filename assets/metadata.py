"""Markdown for the assets' metadata: tables, embedded PNG pictures, and links to the
Dagster UI's pages (at ``HAWKEYE_DAGSTER_URL``), as its routes are in Dagster 1.13:
``/assets/<key path>?view=partitions&partition=<key>`` and ``/runs/<run id>``."""

import base64
from urllib.parse import quote, urlencode

import dagster as dg
import pandas as pd

from hawkeye_dagster import settings
from hawkeye_dagster.resources import HawkeyeStorage


def md_table(frame: pd.DataFrame, limit: int = 20) -> dg.MetadataValue:
    """A frame's first rows as markdown (numbers to 4 significant digits)."""
    shown = frame.head(limit).map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
    return dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_none_")


def png_md(png: bytes, alt: str) -> str:
    """A PNG embedded in markdown."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def saved_png_md(storage: HawkeyeStorage, png: bytes, *parts: str) -> str:
    """Save a PNG under storage and return it embedded in markdown (alt: its file name)."""
    storage.write_bytes(png, *parts)
    return png_md(png, parts[-1])


def asset_url(key: dg.AssetKey, partition: str | None = None) -> str:
    """The asset's page in the UI, on ``partition`` (multi-partition keys as ``a|b``) if given."""
    path = "/".join(quote(part, safe="") for part in key.path)
    query = f"?{urlencode({'view': 'partitions', 'partition': partition})}" if partition else ""
    return f"{settings.dagster_url()}/assets/{path}{query}"


def run_url(run_id: str) -> str:
    """A run's page in the UI."""
    return f"{settings.dagster_url()}/runs/{run_id}"


def md_link(text: str, url: str) -> str:
    """A markdown link whose text cannot break a table cell or the link."""
    shown = text.replace("|", "/").replace("[", "(").replace("]", ")")
    return f"[{shown}]({url})"
