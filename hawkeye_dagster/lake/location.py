"""Files by location: a local path (or ``file://`` URL) or an fsspec URL.

fsspec URLs (``s3://bucket/lake``, ``memory://lake``, ...) go through
``pyarrow.fs.PyFileSystem(FSSpecHandler(...))`` when the filesystem package
for the scheme is installed.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pyarrow.fs as pafs

from hawkeye_dagster.errors import ContractError


def is_url(location: str) -> bool:
    """Whether ``location`` names a scheme (``s3://...``) rather than a local path; a
    ``file:`` URL names a local path."""
    scheme = urlsplit(location).scheme
    return len(scheme) > 1 and scheme != "file"


def is_file_url(location: str) -> bool:
    return urlsplit(location).scheme == "file"


def is_absolute(location: str) -> bool:
    """Whether ``location`` stands on its own (a URL, a ``file:`` URL or an absolute path)
    rather than relative to some folder."""
    return is_url(location) or is_file_url(location) or os.path.isabs(location)


def local_path(location: str) -> str:
    """The absolute local path of a path or ``file:`` URL (``file:///a%20b`` is ``/a b``,
    ``file://localhost/x`` is ``/x``); a URL for another host is refused."""
    if not is_file_url(location):
        return os.path.abspath(os.path.expanduser(location))
    parts = urlsplit(location)
    if parts.netloc not in ("", "localhost"):
        raise ContractError(f"a file: URL for another host ({parts.netloc!r}) is not local",
                            file=location)
    return os.path.abspath(url2pathname(parts.path))


def filesystem_for(location: str) -> tuple[pafs.FileSystem, str]:
    """The Arrow filesystem holding ``location`` and the path of ``location`` inside it."""
    if not is_url(location):
        return pafs.LocalFileSystem(), local_path(location)
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
