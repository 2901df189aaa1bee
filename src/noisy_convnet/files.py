"""Files written so that nothing is ever half-written, and locks that serialise work on one folder.

``write_atomic`` writes through a temporary file in the same directory and ``os.replace`` (atomic on POSIX):
a crash half-way leaves no file that could be taken for a result. ``lock`` holds a POSIX lock on a file
while a process computes something that another process may be about to compute too (a sweep cell, a
shared stage); the lock dies with its process.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def user_path(value: str, key: str) -> str:
    """A path the user gave under ``key``: ``~`` expanded and spelled in one way (``a/./b`` and ``a//b`` are
    ``a/b``), so the same file is the same input wherever it is named; an empty one (an unset variable) is
    refused, never taken for the current folder."""
    from .errors import UserError

    if not str(value).strip():
        raise UserError(f"{key}: an empty path (an unset variable?); give a file or folder")
    return os.path.normpath(os.path.expanduser(str(value)))


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write through a temporary file in the same directory and os.replace: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it, not mkstemp's owner-only 0600
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_array(path: str | Path, array: np.ndarray) -> None:
    """np.save, written atomically."""
    buf = io.BytesIO()
    np.save(buf, array)
    write_atomic(path, buf.getvalue())


LOCK = ".lock"  # a cell's lock file in its folder, held from its look-up to its record (cell.Cell.claimed)


@contextmanager
def lock(path: str | Path, what: str):
    """Holds the POSIX lock of file ``path`` (made if missing): a second process asking for it waits,
    saying so at once and every ten minutes (``what`` names what it waits for). The lock dies with its
    process (a killed holder leaves none); POSIX locks work on NFS too. A file system without locks: a
    warning, and the work runs unlocked rather than not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):  # held by another process
                _wait(f, what)
            else:  # ENOLCK
                log.warning("cannot lock %s (%s): two processes computing %s at once would both do it", path, e, what)
        yield  # closing the file releases the lock


@contextmanager
def try_lock(path: str | Path):
    """Holds the POSIX lock of file ``path`` (made if missing) when no other process does: yields True;
    False at once when another holds it (or the file system has no locks)."""
    with open(path, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def _wait(f, what: str, every_s: float = 1.0, say_every_s: float = 600.0) -> None:
    waited = 0.0
    while True:
        if waited % say_every_s < every_s:  # at once, then every ten minutes: a stuck holder is seen
            log.info("another process is computing %s: waiting for it (%.0f min so far)", what, waited / 60)
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            time.sleep(every_s)
            waited += every_s
