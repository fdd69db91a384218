"""Owner-only files: a store holds every logged input, so nothing in it is readable by other users.

The store's directories are 0700 and its files 0600, whatever the process umask. SQLite creates a
database's ``-wal`` and ``-shm`` files with the mode of the database file itself, so creating the
database file 0600 before the first connection (:func:`private_database`) keeps those private too.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) if needed and make it owner-only.

    An existing directory this user cannot change (another owner, a read-only volume) is left as
    it is: opening such a store is still allowed, it just is not ours to tighten.
    """
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.chmod(DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty if it does not exist, owner-only (0600); an existing file is made 0600.

    Call it before anything else opens the file (a log handler, ``open(path, "a")``) so the file
    never exists with the umask's mode, not even for a moment.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    with contextlib.suppress(OSError):  # not ours to change, or a read-only volume: leave it
        path.chmod(FILE_MODE)
    return path


def private_database(path: Path) -> Path:
    """Make the SQLite database ``path`` owner-only before connecting to it: the file itself, and
    the ``-wal``/``-shm``/``-journal`` files SQLite keeps beside it (which take the database's mode)."""
    private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            with contextlib.suppress(OSError):
                side.chmod(FILE_MODE)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new owner-only file ``path`` (created 0600, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, FILE_MODE)  # O_CREAT's mode does not apply to a file that already existed


__all__ = ["DIR_MODE", "FILE_MODE", "private_database", "private_dir", "private_file", "write_private"]


def stamped_sibling(path: Path, label: str, suffix: str = "") -> Path:
    """A name not yet taken beside ``path``: ``<name>.<label>-<UTC time>[-<n>]<suffix>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = path.with_name(f"{path.name}.{label}-{stamp}{suffix}"), 1
    while target.exists():
        target = path.with_name(f"{path.name}.{label}-{stamp}-{n}{suffix}")
        n += 1
    return target
