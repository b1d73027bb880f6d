"""Writing files that a crash, a kill or a full disk must never leave torn, and one process per output."""

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dsbs.errors import UserError

LOCK_FILE = ".dsbs.lock"


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


def replace_dir(staging: Path, target: Path) -> None:
    """Put the finished directory ``staging`` at ``target`` so that a kill at any moment leaves one
    complete copy (the old one survives as ``.old-NAME`` until the new one is in place)."""
    old = target.with_name(f".old-{target.name}")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def exclusive(path: str | os.PathLike, what: str):
    """Hold an exclusive lock on an output (a directory, or a file's ``.NAME.lock`` beside it) while
    a command writes it. flock: the kernel releases it when the process dies, even by kill -9."""
    path = Path(path)
    if path.suffix:  # an output file: its lock sits beside it
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(f".{path.name}.lock")
    else:
        path.mkdir(parents=True, exist_ok=True)
        lock = path / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"{path} is in use by pid {holder} (another dsbs {what} is writing it); wait for it to "
                        "finish or choose another output") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    try:
        yield
    finally:
        os.close(fd)
