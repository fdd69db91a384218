"""``nbdeploy upgrade``: bring a store made by an older nbdeploy to this one's format, in place.

A copy of ``nbdeploy.db`` is made first (beside it, named for its format and the time), then every
step due runs in one transaction, so the database is either all upgraded or as it was. Model files
and the prediction log are kept as they are (the log's tables grow additively when a server opens it).

A PostgreSQL store is upgraded in one transaction too, without a copy: back the database up with
the tools made for it (``pg_dump``) before upgrading.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from nbdeploy.errors import NotFound
from nbdeploy.store import database
from nbdeploy.store import format as store_format
from nbdeploy.store.registry import DB_FILE, Store


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` did: the formats before and after, the copy it made, the steps it ran."""

    home: Path | str
    before: int
    after: int
    backup: Path | None
    steps: tuple[str, ...]

    def __str__(self) -> str:
        if self.before == self.after:
            return f"the store at {self.home} has format {self.after}, this nbdeploy's: nothing to upgrade"
        lines = [f"upgraded the store at {self.home} from format {self.before} to {self.after}"]
        if self.backup is not None:
            lines.append(f"  a copy of the database from before is at {self.backup}")
        lines += [f"  - {step}" for step in self.steps]
        return "\n".join(lines)


def upgrade(home: str | os.PathLike[str] | None = None) -> Upgrade:
    """Upgrade the existing store at ``home`` (default: ``$NBDEPLOY_HOME`` or ``./.nbdeploy``) in place."""
    where = database.locate(home)
    if where.is_postgres:
        db = database.connect(where, "registry")
        if not store_format.exists(db):
            raise NotFound(f"no nbdeploy store in {where.shown} (pass home=, or set NBDEPLOY_HOME)")
        before = store_format.check(db, where.shown)
        if before == store_format.FORMAT:
            return Upgrade(where.shown, before, before, None, ())
        store = Store(where.text, upgrade=True)
        return Upgrade(where.shown, before, store_format.FORMAT, None, tuple(store.upgraded))
    path = where.directory
    db_path = path / DB_FILE
    if not db_path.is_file():
        raise NotFound(f"no nbdeploy store at {path} (pass home=, or set NBDEPLOY_HOME)")
    with contextlib.closing(sqlite3.connect(db_path, timeout=30, isolation_level=None)) as db:
        before = store_format.check(db, str(path))  # a newer store is refused before anything is copied
        if before == store_format.FORMAT:
            return Upgrade(path, before, before, None, ())
        copy = store_format.backup(db, db_path, before)
    store = Store(path, upgrade=True)
    return Upgrade(path, before, store_format.FORMAT, copy, tuple(store.upgraded))
