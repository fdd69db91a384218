"""Reading a store's log tables in the tests, on either backend, outside any server's connections."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from nbdeploy.store import database, postgres


def log_db(home: str | Path) -> Any:
    """A new connection to the log's tables of the store at ``home``: a SQLite connection to ``log.db``,
    or a PostgreSQL session (its rows are tuples too, and labels come back decoded)."""
    where = database.locate(home)
    if where.url is not None:
        return postgres.Session(where.url, "tests")
    return sqlite3.connect(where.directory / "log.db")


def is_postgres(home: str | Path) -> bool:
    return database.locate(home).is_postgres
