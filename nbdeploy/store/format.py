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

A PostgreSQL store records its format in a one-row table, ``nbdeploy_format``, and runs the same
steps (:data:`MIGRATIONS`: one numbered list for both backends), in one transaction under the
registry's write lock, so processes opening it at once migrate it once.

The prediction log (``log.db``) belongs to the same format: its tables only ever grow additively,
migrated when the server opens it (:func:`nbdeploy.store.logfile.prepare`), and a store too new for
this nbdeploy is refused when the server opens the registry, before the log is opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdeploy._version import __version__
from nbdeploy.errors import Conflict
from nbdeploy.store import database, numbering
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
    run: Callable[[Any], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "recorded each model's highest version number, so a deleted version's number is never given "
                 "again", True, numbering.record_marks),
)


def found(db: Any) -> int:
    """The format of the database ``db`` is open on: 0 for an empty one (a store being created)."""
    if database.is_postgres(db):
        if db.execute("SELECT to_regclass('nbdeploy_format')").fetchone()[0] is not None:
            row = db.execute("SELECT MAX(version) FROM nbdeploy_format").fetchone()
            if row[0]:
                return int(row[0])
        return LEGACY if exists(db) else 0
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version:
        return version
    return LEGACY if exists(db) else 0


def exists(db: Any) -> bool:
    """Whether ``db`` holds a store (its ``versions`` table)."""
    if database.is_postgres(db):
        return db.execute("SELECT to_regclass('versions')").fetchone()[0] is not None
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'versions'").fetchone() is not None


def stamp(db: Any, version: int) -> None:
    """Record ``version`` as the store's format (inside the caller's transaction, if any)."""
    if database.is_postgres(db):
        db.execute("CREATE TABLE IF NOT EXISTS nbdeploy_format (version INTEGER NOT NULL)")
        db.execute("DELETE FROM nbdeploy_format")
        db.execute("INSERT INTO nbdeploy_format (version) VALUES (?)", (version,))
        return
    db.execute(f"PRAGMA user_version = {int(version)}")


def check(db: Any, shown: str) -> int:
    """The store's format; a newer one than :data:`FORMAT` is refused, naming both."""
    version = found(db)
    if version > FORMAT:
        raise StoreFormatError(f"the store at {shown} has format {version}, made by a newer nbdeploy; this "
                               f"nbdeploy {__version__} reads formats up to {FORMAT}: upgrade nbdeploy "
                               "(pip install -U nbdeploy) to open it")
    return version


def due(version: int) -> list[Migration]:
    """The steps that bring a store of format ``version`` to :data:`FORMAT`, in order."""
    return [m for m in MIGRATIONS if m.to > version]


def prepare(db: Any, shown: str, create: Callable[[], None], *, upgrade: bool = False) -> list[str]:
    """Check the store's format, create or update its tables (``create``, idempotent), and migrate it.

    ``upgrade`` runs every step due, else only automatic ones (a step that is not refuses the store,
    naming the upgrade command). Returns what the steps did. ``db`` is in autocommit mode.
    """
    version = check(db, shown)
    create()  # tables and columns added since (CREATE TABLE IF NOT EXISTS: new tables for an older store)
    if version == FORMAT:
        return []
    if version == 0:  # a new store: nothing to migrate (under the write lock: another process may be creating it)
        db.execute("BEGIN IMMEDIATE")
        try:
            if found(db) in (0, LEGACY):  # LEGACY: created, not yet stamped; a stamp another process made stays
                stamp(db, FORMAT)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return []
    manual = [m for m in due(version) if not m.automatic]
    if manual and not upgrade:
        raise StoreFormatError(f"the store at {shown} has format {version} and this nbdeploy needs format "
                               f"{FORMAT}, through a step that rewrites stored data and so is not run on open: "
                               f"run `nbdeploy upgrade --home {shown}` (it copies nbdeploy.db first)")
    db.execute("BEGIN IMMEDIATE")
    try:
        version = found(db)  # another process may have migrated it meanwhile
        done = []
        for step in due(version):
            step.run(db)
            done.append(step.does)
        stamp(db, FORMAT)  # inside the transaction: committed with the steps
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
