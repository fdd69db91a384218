"""The store's format version: which layout of ``nbdeploy.db`` (and of the files beside it) a store has.

It is SQLite's own ``PRAGMA user_version`` of ``nbdeploy.db``: one integer in the file header,
readable before any table is known (``sqlite3 nbdeploy.db 'PRAGMA user_version'``). A store made
before nbdeploy recorded it reads 0 while holding tables: that is format 1. A new store is stamped
with :data:`FORMAT` when it is created.

Opening a store (:class:`nbdeploy.store.Store`) checks it first:

* a store of a newer format than this nbdeploy knows is refused before anything is written, with
  both formats named: upgrade nbdeploy;
* an older store is brought up to date in one transaction when every step due is automatic
  (additive: new tables, new columns, new rows derived from existing ones); a step that is not
  (one that rewrites data) makes opening refuse, naming ``nbdeploy upgrade --home PATH``, which
  copies the database first (:func:`backup`) and then runs every step due.

The prediction log (``log.db``) belongs to the same format: its tables only ever grow additively,
migrated when the server opens it (:func:`nbdeploy.store.logfile.prepare`), and a store too new for
this nbdeploy is refused when the server opens the registry, before the log is opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nbdeploy._version import __version__
from nbdeploy.errors import Conflict
from nbdeploy.store import numbering
from nbdeploy.store.files import private_database, stamped_sibling

FORMAT = 2  # the format this nbdeploy writes, and the newest it reads
LEGACY = 1  # a store from before formats were recorded


class StoreFormatError(Conflict):
    """The store's format is not one this nbdeploy opens as it is (409)."""


@dataclass(frozen=True)
class Migration:
    """One step from format ``to - 1`` to ``to``; ``automatic`` steps run whenever the store is opened."""

    to: int
    does: str
    automatic: bool
    run: Callable[[sqlite3.Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "recorded each model's highest version number, so a deleted version's number is never given "
                 "again", True, numbering.record_marks),
)


def found(db: sqlite3.Connection) -> int:
    """The format of the database ``db`` is open on: 0 for an empty file (a store being created)."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version:
        return version
    tables = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'versions'").fetchone()
    return LEGACY if tables else 0


def check(db: sqlite3.Connection, path: Path) -> int:
    """The store's format; a newer one than :data:`FORMAT` is refused, naming both."""
    version = found(db)
    if version > FORMAT:
        raise StoreFormatError(f"the store at {path.parent} has format {version}, made by a newer nbdeploy; this "
                               f"nbdeploy {__version__} reads formats up to {FORMAT}: upgrade nbdeploy "
                               "(pip install -U nbdeploy) to open it")
    return version


def due(version: int) -> list[Migration]:
    """The steps that bring a store of format ``version`` to :data:`FORMAT`, in order."""
    return [m for m in MIGRATIONS if m.to > version]


def prepare(db: sqlite3.Connection, path: Path, create: Callable[[], None], *, upgrade: bool = False) -> list[str]:
    """Check the store's format, create or update its tables (``create``, idempotent), and migrate it.

    ``upgrade`` runs every step due, else only automatic ones (a step that is not refuses the store,
    naming the upgrade command). Returns what the steps did. ``db`` is in autocommit mode.
    """
    version = check(db, path)
    create()  # tables and columns added since (CREATE TABLE IF NOT EXISTS: new tables for an older store)
    if version == FORMAT:
        return []
    if version == 0:  # a new store: nothing to migrate
        db.execute(f"PRAGMA user_version = {FORMAT}")
        return []
    manual = [m for m in due(version) if not m.automatic]
    if manual and not upgrade:
        raise StoreFormatError(f"the store at {path.parent} has format {version} and this nbdeploy needs format "
                               f"{FORMAT}, through a step that rewrites stored data and so is not run on open: "
                               f"run `nbdeploy upgrade --home {path.parent}` (it copies nbdeploy.db first)")
    db.execute("BEGIN IMMEDIATE")
    try:
        version = found(db)  # another process may have migrated it meanwhile
        done = []
        for step in due(version):
            step.run(db)
            done.append(step.does)
        db.execute(f"PRAGMA user_version = {FORMAT}")  # inside the transaction: committed with the steps
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return done


def backup(db: sqlite3.Connection, path: Path, version: int) -> Path:
    """A consistent copy of the database (SQLite's online backup: safe while a server writes), owner-only,
    named for its format and the time: ``nbdeploy.db.format-1-20260101T120000Z.bak``."""
    target = stamped_sibling(path, f"format-{version}", ".bak")
    copy = sqlite3.connect(private_database(target))
    try:
        db.backup(copy)
    finally:
        copy.close()
    return target
