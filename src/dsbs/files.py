"""Writing files that a crash, a kill or a full disk must never leave torn."""

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` all at once: a reader sees the old file or the new one, never part.

    A uniquely named temporary file in the same directory is written and fsynced, renamed over the
    target, and the directory is fsynced so that the rename itself survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: str | os.PathLike) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line with a single write on an O_APPEND descriptor, so that lines from several
    processes never interleave, then fsync: a finished result is on disk before we go on."""
    raw = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, raw)
        if written != len(raw):
            raise OSError(f"{path}: short write ({written} of {len(raw)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)
