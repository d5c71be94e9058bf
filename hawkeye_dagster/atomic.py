"""Write a file so that no reader, and no crash, ever sees half of it.

Every output of the project (reports, statistics, plots, incident files, the demo's instance
configuration) goes through :func:`write_atomically`: the bytes go to a hidden temporary file
in the target's own folder (same filesystem), then ``os.replace`` puts it in place in one
step. A process killed at any moment leaves either the old file or the new one; a retried run
overwrites the same way. A process killed while writing leaves at most a hidden
``.tmp-*`` file, which no reader lists (Parquet datasets and the project's readers skip
dot-files). The data is not fsynced: this survives a process crash, not a power loss.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hawkeye_dagster.errors import StorageWriteError

TEMP_PREFIX = ".tmp-"


def write_atomically(target: Path, data: bytes) -> Path:
    """``data`` as the whole content of ``target``; raises :class:`StorageWriteError` naming
    ``target`` when it cannot be written (nothing partial is left then)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX, suffix=target.suffix)
    except OSError as exc:
        raise StorageWriteError(str(target), exc.strerror or str(exc)) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageWriteError(str(target), exc.strerror or str(exc)) from exc
        raise
    return target
