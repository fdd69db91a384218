"""Where a store lives, and the one place that tells its two backends apart.

A store is a directory (SQLite files: the embedded default, nothing to run) or a PostgreSQL URL
(``postgresql://user@host/db``: one database that server processes on several machines share).
Everywhere a store path is accepted, a URL is too (``home=``, ``NBDEPLOY_HOME``, ``--home``).

A PostgreSQL store also has a directory on each machine that uses it (:func:`local_directory`):
what one machine runs and nobody else needs — its server's record, ports and log file, the
access token, a cache of model files read from the database (checksum-checked, as ever) — kept
apart from what every machine shares.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdeploy.errors import InvalidInput
from nbdeploy.store import postgres

URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
DEFAULT_HOME = ".nbdeploy"  # beside the notebook, like MLflow's ./mlruns
LOCAL_ENV = "NBDEPLOY_LOCAL_DIR"  # where this machine keeps a PostgreSQL store's local files



def __getattr__(name: str) -> Any:
    """``Error``: every error either backend raises for a database problem (``except database.Error``).

    Worked out when asked (an ``except`` clause asks when an exception passes through it), because
    psycopg is imported only once a PostgreSQL store is used (:func:`nbdeploy.store.postgres.load`).
    """
    if name == "Error":
        return (sqlite3.Error, *postgres.errors())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Location:
    """A store's address: ``text`` reopens it (a path or the URL), ``directory`` holds its local files."""

    text: str
    directory: Path
    url: str | None = None  # the PostgreSQL URL, None for a SQLite store

    @property
    def is_postgres(self) -> bool:
        return self.url is not None

    @property
    def shown(self) -> str:
        """What messages show: the path, or the URL without its password."""
        return postgres.redact(self.url) if self.url else str(self.directory)


def is_url(text: str) -> bool:
    return text.startswith(postgres.SCHEMES)


def locate(home: str | os.PathLike[str] | None = None, *, environ: dict[str, str] | None = None) -> Location:
    """The store ``home`` names (default ``$NBDEPLOY_HOME``, else ``./.nbdeploy``)."""
    env = os.environ if environ is None else environ
    source, text = ("home", os.fspath(home)) if home else ("NBDEPLOY_HOME", env.get("NBDEPLOY_HOME", ""))
    if not text:
        path = Path(DEFAULT_HOME).resolve()
        return Location(str(path), path)
    if is_url(text):
        postgres.require()
        return Location(text, local_directory(text, env), text)
    url = URL_RE.match(text)
    if url:  # name only the scheme: a database URL may carry a password
        raise InvalidInput(f"{source} is a {url.group(0)} URL: a store is a directory or a PostgreSQL URL "
                           "(postgresql://user@host/database)")
    path = Path(text).expanduser().resolve()
    return Location(str(path), path)


def local_directory(url: str, environ: Any = None) -> Path:
    """This machine's directory for the PostgreSQL store at ``url``: ``$NBDEPLOY_LOCAL_DIR`` if set,
    else one per database under the user's cache directory (named by a digest of the URL without
    its password, so one database has one directory whatever password a caller writes)."""
    env = os.environ if environ is None else environ
    if env.get(LOCAL_ENV):
        return Path(env[LOCAL_ENV]).expanduser().resolve()
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(postgres.redact(url).encode()).hexdigest()[:16]
    return (cache / "nbdeploy" / f"postgres-{digest}").resolve()


def connect(location: Location, scope: str, path: Path | None = None) -> Any:
    """A connection for ``scope`` (``registry`` or ``log``): a PostgreSQL session, or for a SQLite
    store ``None`` (each SQLite module opens its own file with the settings that file needs)."""
    if location.url is None:
        return None
    return postgres.Session(location.url, scope)


def is_postgres(db: Any) -> bool:
    return isinstance(db, postgres.Session)


def transient(exc: BaseException) -> bool:
    """Another writer holds the lock, or the database server is out of reach for now: retry."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return postgres.is_transient(exc)


__all__ = [
    "LOCAL_ENV",
    "Location",
    "connect",
    "is_postgres",
    "is_url",
    "local_directory",
    "locate",
    "transient",
]
