"""Files by location: a local path (or ``file://`` URL) or an fsspec URL.

fsspec URLs (``s3://bucket/lake``, ``memory://lake``, ...) go through
``pyarrow.fs.PyFileSystem(FSSpecHandler(...))`` when the filesystem package
for the scheme is installed.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from hawkeye_dagster.errors import ContractError


def is_url(location: str) -> bool:
    """Whether ``location`` names a scheme (``s3://...``) rather than a local path."""
    scheme = urlsplit(location).scheme
    return len(scheme) > 1 and scheme != "file"


def filesystem_for(location: str) -> tuple[pafs.FileSystem, str]:
    """The Arrow filesystem holding ``location`` and the path of ``location`` inside it."""
    if not is_url(location):
        path = location.removeprefix("file://")
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise ContractError(f"no filesystem for {location!r}: {exc}", file=location) from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def open_input(location: str):
    """A seekable binary file object for ``location`` (the caller closes it)."""
    fs, path = filesystem_for(location)
    return fs.open_input_file(path)
