"""Markdown for the assets' metadata: tables and embedded PNG pictures."""

import base64

import dagster as dg
import pandas as pd

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
