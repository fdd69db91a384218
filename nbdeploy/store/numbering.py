"""Version numbers: 1, 2, 3 … per model name, never given twice.

A deleted version's number is not given again (the next deploy after deleting version 3 of 3 gets
4), nor is any number of a model deleted whole and deployed again under its name: a number in a
log line, an export, a metric label or a client's cache names one model only. So the registry keeps
the highest number each name was ever given (a ``last_version:<name>`` row in its ``state`` table),
and the next number is one above the larger of that mark and the highest stored version.
"""

from __future__ import annotations

import sqlite3

_PREFIX = "last_version:"  # model names never hold ':', so the key is unambiguous


def mark_key(name: str) -> str:
    return _PREFIX + name


def next_version(db: sqlite3.Connection, name: str) -> int:
    """The number of ``name``'s next version, recorded as the new mark. Call it inside the write
    transaction that stores the version, so a failed store gives the number back."""
    top = db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()[0] or 0
    mark = db.execute("SELECT value FROM state WHERE key = ?", (mark_key(name),)).fetchone()
    number = max(int(top), int(mark[0]) if mark else 0) + 1
    db.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
               (mark_key(name), number))
    return number


def record_marks(db: sqlite3.Connection) -> None:
    """Record the mark of every stored model that has none (a store from before marks were kept)."""
    db.execute("INSERT OR IGNORE INTO state (key, value) SELECT ? || name, MAX(version) FROM versions GROUP BY name",
               (_PREFIX,))
