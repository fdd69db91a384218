"""The prediction log's database file: open it, create or migrate its tables, set a corrupt one aside.

The log is optional to the server: a ``log.db`` that SQLite cannot read ("file is not a
database", "database disk image is malformed") is renamed ``log.db.corrupt-<UTC time>`` (with
its ``-wal`` and ``-shm`` files) and a fresh one is started; the fresh file records that in its
``incidents`` table, which the monitor shows as a note. Several server workers share one file,
so setting aside happens under a file lock and only once per bad file.

New files are created with ``auto_vacuum=INCREMENTAL`` (it must be set before the first table),
so the space retention frees can be returned to the file system a little at a time; an older
small file is converted when opened, a large one keeps reusing its free pages instead.

On a PostgreSQL store the log's tables live in the store's database (created with the registry's,
see :class:`nbdeploy.store.registry.Store`): :class:`LogFile` then holds two sessions of the
log's scope instead of two file connections, and there is no file to set aside, convert or vacuum.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nbdeploy.errors import Unavailable
from nbdeploy.store import database, postgres
from nbdeploy.store.files import private_database, stamped_sibling

log = logging.getLogger("nbdeploy.log")

# SQLite primary result codes (the low byte of ``sqlite3.Error.sqlite_errorcode``)
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 5, 6, 11, 13, 26
WRITE_WAIT_S = 2.0  # one write attempt waits this long for a lock; then the writer backs off and tries again
OPEN_WAIT_S = 5.0  # opening waits this long for another worker preparing the file; longer, the writer tries again
CONVERT_BELOW = 64 * 1024 * 1024  # an older file smaller than this is vacuumed into incremental mode at open
WAL_LIMIT = 64 * 1024 * 1024  # the WAL file is truncated to this after a checkpoint (a big batch grows it)

TABLES = """
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, ts REAL NOT NULL, model TEXT NOT NULL,
    version INTEGER NOT NULL, inputs BLOB, label, proba BLOB, outputs BLOB, latency_ms REAL NOT NULL,
    status INTEGER NOT NULL, error TEXT, client_id TEXT);
CREATE INDEX IF NOT EXISTS predictions_model ON predictions (model, version);
CREATE TABLE IF NOT EXISTS columns (
    model TEXT NOT NULL, version INTEGER NOT NULL, names TEXT NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL, label, ts REAL NOT NULL,
    pred_seq INTEGER NOT NULL, pred_ts REAL NOT NULL, updates INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS feedback_model ON feedback (model, version, pred_seq);
CREATE INDEX IF NOT EXISTS feedback_pred ON feedback (pred_seq);
CREATE TABLE IF NOT EXISTS rollup (
    model TEXT NOT NULL, version INTEGER NOT NULL, bucket INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, rows INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    server_errors INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
    latency_sum REAL NOT NULL DEFAULT 0, latency BLOB,
    labelled INTEGER NOT NULL DEFAULT 0, correct INTEGER NOT NULL DEFAULT 0, err_n INTEGER NOT NULL DEFAULT 0,
    abs_err REAL NOT NULL DEFAULT 0, sq_err REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (model, version, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feature_rollup (
    model TEXT NOT NULL, version INTEGER NOT NULL, bucket INTEGER NOT NULL, feature TEXT NOT NULL,
    n INTEGER NOT NULL, missing INTEGER NOT NULL, out_of_range INTEGER NOT NULL, unseen INTEGER NOT NULL,
    PRIMARY KEY (model, version, bucket, feature)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incidents (ts REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL)
"""
# after the migration: a file from before client ids gets the column first. Partial: most rows have none.
INDEXES = "CREATE INDEX IF NOT EXISTS predictions_client ON predictions (client_id) WHERE client_id IS NOT NULL"


def error_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of an error (None for anything else)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_busy(exc: BaseException) -> bool:
    """Another connection holds the lock: worth waiting for."""
    return error_code(exc) in (SQLITE_BUSY, SQLITE_LOCKED)


def is_full(exc: BaseException) -> bool:
    return error_code(exc) == SQLITE_FULL


def is_corrupt(exc: BaseException) -> bool:
    """The file is not a readable database: set it aside (see :func:`set_aside`)."""
    return error_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def connect(path: str | Path, synchronous: str = "NORMAL", timeout: float = 30.0) -> sqlite3.Connection:
    """A connection in WAL mode; ``timeout`` is how long a statement waits for another writer's lock."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect only on a file without tables yet
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    except BaseException:
        conn.close()
        raise
    return conn


def prepare(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring an older file's up to date, in one write transaction.

    Raises ``sqlite3.DatabaseError`` for a file that is not a readable database.
    """
    conn.execute("BEGIN IMMEDIATE")  # several workers may open one file at once
    try:
        for statement in TABLES.split(";"):
            conn.execute(statement)
        names = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
        if "client_id" not in names:  # a log from before server-made keys: its ids were the clients'
            conn.execute("ALTER TABLE predictions ADD COLUMN client_id TEXT")
        conn.execute(INDEXES)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        _convert(conn)


def _convert(conn: sqlite3.Connection) -> None:
    """Switch an older file to incremental vacuum when that is cheap (a small file); else say what to do."""
    path = Path(conn.execute("PRAGMA database_list").fetchone()[2])
    if path.stat().st_size < CONVERT_BELOW:
        with contextlib.suppress(sqlite3.OperationalError):  # another worker may hold the file: next start
            conn.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
            return
    log.info("%s predates incremental vacuum: space freed by retention is reused, not returned to the file "
             "system; to return it, run `sqlite3 %s 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM'` while no server "
             "uses it", path, path)


def identity(path: Path) -> tuple[int, int] | None:
    """The file's (device, inode), to tell whether another process already replaced it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def recovery_lock(path: Path) -> Iterator[None]:
    """One process at a time sets a bad file aside (server workers share the file)."""
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def set_aside(path: Path) -> Path:
    """Rename a bad ``log.db`` (and its ``-wal``/``-shm``, which belong to it) to ``log.db.corrupt-<time>``."""
    target = stamped_sibling(path, "corrupt")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, target.with_name(target.name + suffix))
    return target


class LogFile:
    """The open file of one log: the writer's and feedback's connections, and what became of the file.

    ``ok`` while it can be written; ``error`` says why not. :meth:`recover` sets an unreadable file
    aside and starts afresh; when even that fails the log runs without a file (``writer`` None).
    Hold ``write_lock`` to use ``writer`` and ``feedback_lock`` to use ``feedback``.

    With ``url`` (a PostgreSQL store) ``writer`` and ``feedback`` are sessions on the store's
    database; ``path`` is then only a name in this machine's directory, and messages show ``shown``
    (the URL without its password).
    """

    def __init__(self, path: Path, feedback_timeout_s: float, url: str | None = None) -> None:
        self.path, self.feedback_timeout_s, self.url = path, feedback_timeout_s, url
        self.shown = postgres.redact(url) if url else str(path)
        self.writer: Any = None  # a sqlite3.Connection, or a postgres.Session
        self.feedback: Any = None  # synchronous=FULL: an acknowledged label survives a crash
        self.write_lock, self.feedback_lock = threading.Lock(), threading.Lock()
        self.error: str | None = None
        self.recoveries = 0
        self.recovered_from: Path | None = None
        self.epoch = 0  # moves each time a file is opened: readers of the previous one reopen
        self._ident: tuple[int, int] | None = None
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):
                self.recover(exc)
            else:
                self._disable(f"cannot open {self.shown}: {exc}")
        except (OSError, Unavailable, *database.Error) as exc:
            self._disable(f"cannot open {self.shown}: {exc}")

    @property
    def is_postgres(self) -> bool:
        return self.url is not None

    @property
    def ok(self) -> bool:
        return self.writer is not None and self.error is None

    def _connect(self) -> None:
        if self.url is not None:
            self._connect_postgres(self.url)
            return
        writer = connect(private_database(self.path), timeout=OPEN_WAIT_S)  # another worker may be preparing it
        try:
            prepare(writer)
            writer.execute(f"PRAGMA busy_timeout={int(WRITE_WAIT_S * 1000)}")
            feedback = connect(self.path, "FULL", timeout=self.feedback_timeout_s)
        except BaseException:
            writer.close()
            raise
        self.writer, self.feedback = writer, feedback
        self._ident = identity(self.path)
        self.epoch += 1

    def _connect_postgres(self, url: str) -> None:
        """Two sessions of the log's scope; the tables are the store's (its ``Store`` created them)."""
        writer = postgres.Session(url, "log")
        if writer.execute("SELECT to_regclass('predictions')").fetchone()[0] is None:
            raise Unavailable(f"no nbdeploy store in {self.shown}: its tables are created with the store")
        self.writer, self.feedback = writer, postgres.Session(url, "log", self.feedback_timeout_s)
        self.epoch += 1

    def recover(self, exc: BaseException) -> None:
        """Set the unreadable file aside and start a fresh one: once, whichever worker sees it first.
        (SQLite only: a PostgreSQL server reports no corrupt file.)"""
        detail = ""
        try:
            with self.write_lock, self.feedback_lock, recovery_lock(self.path):
                self._close()
                replaced = self._ident is not None and identity(self.path) != self._ident
                if self._ident is None or replaced:  # at start, or another worker replaced it already: try it
                    try:
                        self._connect()
                        return
                    except sqlite3.DatabaseError as again:
                        if not is_corrupt(again):
                            raise
                moved = set_aside(self.path)
                self._connect()
                assert self.writer is not None
                detail = (f"{self.path.name} was unreadable ({exc}): it was set aside as {moved.name} and a fresh "
                          f"log started at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
                self.writer.execute("INSERT INTO incidents (ts, kind, detail) VALUES (?, 'recovered', ?)",
                                    (time.time(), detail))
        except Exception as again:
            self._disable(f"{self.path} is unreadable ({exc}) and a fresh log could not be started: {again}")
            return
        self.recoveries += 1
        self.recovered_from = moved
        self.error = None
        log.error("%s; the predictions before it stay in %s", detail, moved)

    def follow(self) -> None:
        """Open the file again when another process (a writer process, another worker) has set the one this
        holds aside and started a fresh one: labels must go to the log predictions go to."""
        if self.url is not None or self._ident is None:
            return
        now = identity(self.path)
        if now is None or now == self._ident:
            return
        with contextlib.suppress(sqlite3.Error, OSError), self.write_lock, self.feedback_lock:
            if identity(self.path) != self._ident:
                self._close()
                self._connect()
                self.error = None

    def reopen(self) -> None:
        """Try again a file that could not be opened (locked at start, a passing I/O error); the writer
        thread calls it now and then while there is no file, and predictions are counted as dropped."""
        if self.writer is not None:
            return
        try:
            with self.write_lock, self.feedback_lock:
                self._connect()
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):
                self.recover(exc)
            else:
                self.error = f"cannot open {self.shown}: {exc}"
            return
        except (OSError, Unavailable, *database.Error) as exc:
            self.error = f"cannot open {self.shown}: {exc}"
            return
        self.error = None
        log.warning("%s is open again: predictions are logged again", self.shown)

    def _disable(self, why: str) -> None:
        self._close()
        self.error = why
        log.error("%s: serving without a prediction log (every prediction is counted as dropped)", why)

    def _close(self) -> None:
        for conn in (self.writer, self.feedback):
            if conn is not None:
                conn.close()
        self.writer = self.feedback = None

    def close(self) -> None:
        with self.write_lock, self.feedback_lock:
            self._close()
