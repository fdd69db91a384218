"""The model registry: versions, aliases and serving state, in SQLite (embedded) or PostgreSQL.

Layout under ``home`` (directories 0700, files 0600: see :mod:`nbdeploy.store.files`)::

    nbdeploy.db                      index, aliases, serving state (WAL mode)
    models/<name>/<version>/model.onnx
    models/<name>/<version>/model.json
    models/<name>/<version>/...      extra files (held-out rows, the kernel-side estimator)

A PostgreSQL store (``home`` a ``postgresql://`` URL, see :mod:`nbdeploy.store.database`) keeps
the same tables in the database, and each version's files in its ``files`` table (models are
small, so a cluster needs only the URL); ``home`` is then this machine's directory, where
``models/`` is a cache of those files and ``runtime.db`` (SQLite) records what this machine's
server runs (:data:`RUNTIME_SCHEMA`): machines share versions and aliases, not their processes.

Every file of a version is read back only if its sha256 is the one recorded when it was registered.

The kernel writes here; the server reads here and reports back what it loaded. Every change
that alters what should be served bumps ``generation`` so the server can poll one integer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import numbers
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.errors import InvalidInput, NbdeployError, NotFound, UnknownName, did_you_mean
from nbdeploy.store import database
from nbdeploy.store import format as store_format
from nbdeploy.store.files import private_database, private_dir, write_private
from nbdeploy.store.numbering import next_version

PRODUCTION = "production"
SHADOW = "shadow"  # the version that gets a copy of live traffic, answers logged, never returned
CANARY = "canary"  # the version a canary rollout sends a share of live traffic to (store/canary.py)
# Matched with fullmatch: ``$`` would also accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
DB_FILE = "nbdeploy.db"
RUNTIME_DB = "runtime.db"  # a PostgreSQL store's per-machine tables (RUNTIME_SCHEMA)

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, created_at REAL NOT NULL,
    sha256 TEXT NOT NULL, status TEXT NOT NULL, meta TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, serving INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (name, alias));
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER, at REAL NOT NULL, kind TEXT NOT NULL DEFAULT 'set');
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, created_at REAL NOT NULL, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS canaries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
    production INTEGER NOT NULL, percent REAL NOT NULL, key TEXT, promote_after INTEGER,
    guards TEXT NOT NULL, gate TEXT, state TEXT NOT NULL, reason TEXT, started_at REAL NOT NULL, ended_at REAL);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, at REAL NOT NULL, level TEXT NOT NULL,
    reasons TEXT NOT NULL, source TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}',
    delivered_at REAL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX IF NOT EXISTS alerts_name ON alerts (name, at);
CREATE TABLE IF NOT EXISTS webhooks (name TEXT PRIMARY KEY, url TEXT NOT NULL, updated_at REAL NOT NULL);
INSERT OR IGNORE INTO state (key, value) VALUES ('generation', 0)
"""
# What one machine's server runs: in nbdeploy.db for a SQLite store, in runtime.db beside a PostgreSQL one.
RUNTIME_SCHEMA = """
CREATE TABLE IF NOT EXISTS server (
    id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, host TEXT NOT NULL,
    port INTEGER NOT NULL, started_at REAL NOT NULL, applied INTEGER NOT NULL DEFAULT -1, proc_start TEXT);
CREATE TABLE IF NOT EXISTS served (
    name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, error TEXT,
    at REAL NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS workers (
    pid INTEGER PRIMARY KEY, applied INTEGER NOT NULL DEFAULT -1, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS worker_served (
    pid INTEGER NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, error TEXT,
    PRIMARY KEY (pid, name, version))
"""
# A PostgreSQL store's version files (a SQLite store keeps them as files under models/), and its format
# (SQLite's is the file's user_version).
FILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS nbdeploy_format (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    name TEXT NOT NULL, version INTEGER NOT NULL, filename TEXT NOT NULL, sha256 TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (name, version, filename))
"""


@dataclass(frozen=True)
class VersionRecord:
    name: str
    version: int
    created_at: float
    sha256: str
    status: str  # registered | refused
    meta: dict[str, Any]
    path: Path
    # a PostgreSQL store's files come from the database into ``path`` (a cache) when first read
    fetch: Callable[[str], bytes | None] | None = field(default=None, compare=False, repr=False)

    @property
    def onnx_path(self) -> Path:
        self.materialise("model.onnx")
        return self.path / "model.onnx"

    def onnx_bytes(self) -> bytes:
        """The model file, refused unless it is the one registered (sha256)."""
        return _checked(self.onnx_path, self.sha256)

    def materialise(self, filename: str | None = None) -> Path:
        """Bring a PostgreSQL store's file (every file when ``filename`` is None) into ``path``, where
        it is read from like a SQLite store's (and checked against its sha256 when read)."""
        if self.fetch is None:
            return self.path
        names = [filename] if filename else ["model.onnx", "model.json", *self.meta.get("files", {})]
        for name in names:
            target = self.path / name
            if not target.exists():
                data = self.fetch(name)
                if data is not None:
                    private_dir(self.path)
                    tmp = target.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}")
                    write_private(tmp, data)
                    os.replace(tmp, target)  # whole or not at all: another reader may be here too
        return self.path

    def file_bytes(self, filename: str) -> bytes | None:
        """An extra file kept with this version (``None`` if it has none), refused unless it is the
        one registered: its sha256 is recorded in the registry when the version is stored."""
        recorded = self.meta.get("files", {}).get(filename)
        if recorded is not None:
            self.materialise(filename)
        path = self.path / filename
        if recorded is None:
            if path.exists():
                raise IntegrityError(f"{path} has no sha256 recorded in the registry, so it is not known to be "
                                     f"the file registered with {self.name!r} version {self.version}; refusing "
                                     "to read it (deploy the model again to store it with its checksum)")
            return None
        return _checked(path, recorded)


class IntegrityError(NbdeployError):
    """A stored file is not the one registered (changed, replaced or unrecorded): it is never read."""

    status = 500


def _checked(path: Path, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing; it was registered with sha256 {sha256}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"{path} does not match its recorded sha256; refusing to load it (it was changed "
                             "after it was registered: deploy the model again)")
    return data


@dataclass(frozen=True)
class ServerRecord:
    pid: int
    host: str
    port: int
    started_at: float
    applied: int
    proc_start: str | None = None  # see process_start: tells the server from a later process given its PID

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Store:
    """One ``NBDEPLOY_HOME``. Safe to share between threads; each thread gets its connection."""

    def __init__(self, home: str | os.PathLike[str] | None = None, *, upgrade: bool = False) -> None:
        """The store at ``home`` (a directory or a PostgreSQL URL; default :func:`default_home`),
        created if there is none yet; :func:`open_store` opens only an existing one. Its format is
        checked first and an older store migrated (see :mod:`nbdeploy.store.format`; ``upgrade`` also
        runs steps not run on open); ``upgraded`` says what the migration did (empty when nothing)."""
        self.where = database.locate(home)
        self.location = self.where.text  # what reopens this store, in this process or another
        self.home = private_dir(self.where.directory)
        private_dir(self.home / "models")
        self.db_path = private_database(self.home / (RUNTIME_DB if self.where.is_postgres else DB_FILE))
        self._local = threading.local()
        if self.where.is_postgres:
            self._runtime().executescript(RUNTIME_SCHEMA)
            self._migrate()
        self.upgraded = store_format.prepare(self._conn(), self.where.shown, self._create, upgrade=upgrade)

    @property
    def shown(self) -> str:
        """The store as messages name it (a URL without its password)."""
        return self.where.shown

    def _create(self) -> None:
        db = self._conn()
        if database.is_postgres(db):
            from nbdeploy.store import logfile, postgres
            with self._tx() as tx:  # several processes may create it at once: one at a time
                for statement in postgres.ddl(SCHEMA + ";" + FILES_SCHEMA + ";" + logfile.TABLES + ";"
                                              + logfile.INDEXES):
                    tx.execute(statement)
            return
        db.executescript(SCHEMA + ";" + RUNTIME_SCHEMA)  # idempotent; executescript manages its own transaction
        self._migrate()

    def _migrate(self) -> None:
        """Columns added since a store was created (``CREATE TABLE IF NOT EXISTS`` keeps old tables)."""
        columns = {r[1] for r in self._runtime().execute("PRAGMA table_info(server)")}
        if "proc_start" not in columns:
            with suppress(sqlite3.OperationalError):  # another process added it first
                self._runtime().execute("ALTER TABLE server ADD COLUMN proc_start TEXT")

    # -- connection -------------------------------------------------------------------
    def _conn(self) -> Any:
        """This thread's connection to the shared tables: SQLite's, or a PostgreSQL session."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = database.connect(self.where, "registry") or self._runtime()
            self._local.conn = conn
        return conn

    def _runtime(self) -> sqlite3.Connection:
        """This thread's connection to this machine's tables (the server's record, its workers)."""
        conn = getattr(self._local, "runtime", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.runtime = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A write transaction taken up front, so read-modify-write cannot interleave."""
        with _transaction(self._conn()) as db:
            yield db

    @contextmanager
    def _runtime_tx(self) -> Iterator[sqlite3.Connection]:
        with _transaction(self._runtime()) as db:
            yield db

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE state SET value = value + 1 WHERE key = 'generation'")

    def generation(self) -> int:
        row = self._conn().execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
        return int(row[0])

    # -- versions ---------------------------------------------------------------------
    def register(self, name: str, onnx_bytes: bytes, meta: dict[str, Any], status: str = "registered",
                 files: dict[str, bytes] | None = None) -> int:
        """Store a new version of ``name``; returns its number. Nothing is left behind on failure.

        ``files`` are extra files kept beside the model (held-out data, the kernel-side estimator);
        their sha256 is recorded in ``meta["files"]``, so :meth:`VersionRecord.file_bytes` reads back
        only what was stored here.
        """
        check_name(name)
        files = files or {}
        for filename in files:
            if "/" in filename or "\\" in filename or filename.startswith((".", "model.")):
                raise InvalidInput(f"cannot store an extra file named {filename!r}")
        sha = hashlib.sha256(onnx_bytes).hexdigest()
        model_dir = private_dir(self.home / "models" / name)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=model_dir))  # mkdtemp makes it 0700
        try:
            with self._tx() as db:
                version = next_version(db, name)  # never a number given before, even to a deleted version
                full_meta = {**meta, "name": name, "version": version, "sha256": sha,
                             "files": {f: hashlib.sha256(c).hexdigest() for f, c in files.items()}}
                stored = {"model.onnx": onnx_bytes,
                          "model.json": json.dumps(full_meta, indent=2, default=str).encode(), **files}
                for filename, content in stored.items():
                    write_private(tmp / filename, content)
                if database.is_postgres(db):  # the database holds the files; models/ caches them
                    db.executemany("INSERT INTO files (name, version, filename, sha256, data) VALUES (?,?,?,?,?)",
                                   [(name, version, f, hashlib.sha256(c).hexdigest(), c) for f, c in stored.items()])
                final = model_dir / str(version)
                if final.exists():  # left by a crash before its row was committed
                    shutil.rmtree(final)
                os.replace(tmp, final)
                db.execute(
                    "INSERT INTO versions (name, version, created_at, sha256, status, meta) VALUES (?,?,?,?,?,?)",
                    (name, version, time.time(), sha, status, json.dumps(full_meta, default=str)),
                )
                db.execute(
                    "INSERT OR IGNORE INTO models (name, serving, updated_at) VALUES (?, 0, ?)", (name, time.time())
                )
                self._bump(db)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def version(self, name: str, version: int) -> VersionRecord:
        number = version_number(version)
        if number is None:
            raise InvalidInput(f"a version number is an integer or a string of ASCII digits, got {version!r}")
        row = self._conn().execute(
            "SELECT * FROM versions WHERE name = ? AND version = ?", (name, number)
        ).fetchone()
        if row is None:
            raise NotFound(f"model {name!r} has no version {version}; {self.known(name)}")
        return self._record(row)

    def resolve(self, name: str, ref: int | str | None = None) -> VersionRecord:
        """The version ``ref`` names: ``None`` the ``production`` alias; an int or a string of ASCII
        digits that version number; any other string an alias. The one place this is decided."""
        self.require_model(name)
        number = version_number(ref)
        if number is not None:
            return self.version(name, number)
        alias = PRODUCTION if ref is None else str(ref)
        aliases = self.aliases(name)
        if alias not in aliases:
            raise NotFound(f"model {name!r} has no {alias!r} alias{did_you_mean(alias, aliases)}; "
                           f"{self.known(name)}")
        return self.version(name, aliases[alias])

    def known(self, name: str) -> str:
        """``versions: 1, 2; aliases: production -> 2``: what an error about ``name`` should list."""
        listed = [str(r[0]) for r in self._conn().execute(
            "SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))]
        aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(self.aliases(name).items()))
        return f"versions: {', '.join(listed) or 'none'}; aliases: {aliases or 'none'}"

    def versions(self, name: str) -> list[VersionRecord]:
        rows = self._conn().execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)).fetchall()
        return [self._record(r) for r in rows]

    def model_names(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM models ORDER BY name")]

    def require_model(self, name: str) -> None:
        names = self.model_names()
        if name not in names:
            raise UnknownName("model", name, names)

    def set_status(self, name: str, version: int, status: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE versions SET status = ? WHERE name = ? AND version = ?", (status, name, version))
            self._bump(db)

    def _record(self, row: Any) -> VersionRecord:
        name, version = row["name"], int(row["version"])
        fetch = functools.partial(self._file, name, version) if self.where.is_postgres else None
        return VersionRecord(name, version, row["created_at"], row["sha256"], row["status"],
                             json.loads(row["meta"]), self.home / "models" / name / str(version), fetch)

    def _file(self, name: str, version: int, filename: str) -> bytes | None:
        """One stored file of a version from a PostgreSQL store (None if it has no such file)."""
        row = self._conn().execute("SELECT data FROM files WHERE name = ? AND version = ? AND filename = ?",
                                   (name, version, filename)).fetchone()
        return None if row is None else bytes(row[0])

    # -- runs: what `train` measured, before any version exists --------------------------------
    def add_run(self, name: str, summary: dict[str, Any]) -> int:
        check_name(name)
        with self._tx() as db:
            cur = db.execute("INSERT INTO runs (name, created_at, summary) VALUES (?,?,?)",
                             (name, time.time(), json.dumps(summary, default=str)))
            return int(cur.lastrowid)

    def runs(self, name: str | None = None) -> list[dict[str, Any]]:
        query, args = ("SELECT * FROM runs WHERE name = ? ORDER BY id", (name,)) if name else (
            "SELECT * FROM runs ORDER BY id", ())
        return [{"id": r["id"], "name": r["name"], "created_at": r["created_at"], **json.loads(r["summary"])}
                for r in self._conn().execute(query, args)]

    # -- aliases and serving ------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int, kind: str = "set") -> int | None:
        """Point ``alias`` at ``version``; returns the version it pointed at before.

        ``kind`` is ``set`` or ``rollback``: history replays as a stack, so rollbacks undo in order.
        """
        if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
            raise InvalidInput(
                f"alias {alias!r} is not valid: use letters, digits, '-' and '_', starting with a letter"
            )
        if alias == CANARY:  # it moves with its canary record (store/canary.py), never alone
            raise InvalidInput(f"the {CANARY} alias belongs to canary rollouts: start one with "
                               f"nbdeploy.canary({name!r}, VERSION) (%deploy canary {name} VERSION)")
        self.version(name, version)
        with self._tx() as db:
            row = db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            db.execute("INSERT OR REPLACE INTO aliases (name, alias, version, updated_at) VALUES (?,?,?,?)",
                       (name, alias, version, time.time()))
            db.execute("INSERT INTO alias_history (name, alias, version, at, kind) VALUES (?,?,?,?,?)",
                       (name, alias, version, time.time(), kind))
            self._bump(db)
        return int(row[0]) if row else None

    def remove_alias(self, name: str, alias: str) -> int | None:
        """Drop ``alias``; returns the version it pointed at (None if it did not exist)."""
        with self._tx() as db:
            row = db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            db.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
            self._bump(db)
        return int(row[0]) if row else None

    def aliases(self, name: str) -> dict[str, int]:
        rows = self._conn().execute("SELECT alias, version FROM aliases WHERE name = ?", (name,)).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def alias_history(self, name: str) -> list[dict[str, Any]]:
        """Every move of ``name``'s aliases, oldest first: ``alias``, ``version``, ``at``, ``kind``."""
        rows = self._conn().execute("SELECT alias, version, at, kind FROM alias_history WHERE name = ? ORDER BY id",
                                    (name,)).fetchall()
        return [{"alias": r[0], "version": None if r[1] is None else int(r[1]), "at": float(r[2]), "kind": r[3]}
                for r in rows]

    def previous_version(self, name: str, alias: str = PRODUCTION) -> int | None:
        """What a rollback of ``alias`` returns to: the stack of moves, with rollbacks popped."""
        stack: list[int] = []
        rows = self._conn().execute(
            "SELECT version, kind FROM alias_history WHERE name = ? AND alias = ? ORDER BY id", (name, alias)
        ).fetchall()
        for version, kind in rows:
            if kind == "rollback":
                if stack:
                    stack.pop()
            elif not stack or stack[-1] != version:
                stack.append(int(version))
        # history outlives deleted versions (store/removal.py keeps it readable): return to one that exists
        existing = {int(r[0]) for r in self._conn().execute("SELECT version FROM versions WHERE name = ?", (name,))}
        stack = [v for v in stack if v in existing]
        stack = [v for i, v in enumerate(stack) if i == 0 or stack[i - 1] != v]
        if stack and stack[-1] != self.aliases(name).get(alias):  # the alias was removed: its last version
            return stack[-1]
        return stack[-2] if len(stack) >= 2 else None

    def set_serving(self, name: str, serving: bool) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO models (name, serving, updated_at) VALUES (?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET serving = excluded.serving, updated_at = excluded.updated_at",
                       (name, int(serving), time.time()))
            self._bump(db)

    def serving_models(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM models WHERE serving = 1 ORDER BY name")]

    # -- what the server reports back -----------------------------------------------------
    def set_server(self, pid: int, host: str, port: int) -> None:
        """Record the server process ``pid`` (alive: it is the caller) with its start time, so a
        later process that is given the same PID is never taken for it."""
        with self._runtime_tx() as db:
            db.execute("INSERT OR REPLACE INTO server (id, pid, host, port, started_at, applied, proc_start) "
                       "VALUES (1,?,?,?,?,-1,?)", (pid, host, port, time.time(), process_start(pid)))

    def server(self) -> ServerRecord | None:
        row = self._runtime().execute("SELECT * FROM server WHERE id = 1").fetchone()
        if row is None:
            return None
        return ServerRecord(row["pid"], row["host"], row["port"], row["started_at"], row["applied"],
                            row["proc_start"])

    def clear_server(self, pid: int) -> None:
        with self._runtime_tx() as db:
            db.execute("DELETE FROM server WHERE pid = ?", (pid,))
            db.execute("DELETE FROM served")
            db.execute("DELETE FROM workers")
            db.execute("DELETE FROM worker_served")

    # -- several worker processes behind one server (``nbdeploy serve --workers N``) ---------
    def add_worker(self, pid: int) -> None:
        """The server's parent announces a worker before it reports, so ``applied`` waits for it too."""
        with self._runtime_tx() as db:
            db.execute("INSERT OR IGNORE INTO workers (pid, applied, at) VALUES (?, -1, ?)", (pid, time.time()))
            self._aggregate(db)

    def remove_worker(self, pid: int) -> None:
        """A worker that exited no longer holds ``applied`` back."""
        with self._runtime_tx() as db:
            db.execute("DELETE FROM workers WHERE pid = ?", (pid,))
            db.execute("DELETE FROM worker_served WHERE pid = ?", (pid,))
            self._aggregate(db)

    def workers(self) -> dict[int, int]:
        """Worker pid -> the generation it last applied (empty for a single-process server)."""
        return {int(r[0]): int(r[1]) for r in self._runtime().execute("SELECT pid, applied FROM workers")}

    def _aggregate(self, db: sqlite3.Connection) -> None:
        """``served`` and ``server.applied`` as one server seen from outside: a version is ready when
        every worker holds it, failed when one failed to load it, and ``applied`` is the slowest worker's."""
        pids = [int(r[0]) for r in db.execute("SELECT pid FROM workers")]
        if not pids:
            return
        applied = db.execute("SELECT MIN(applied) FROM workers").fetchone()[0]
        db.execute("UPDATE server SET applied = ? WHERE id = 1", (applied,))
        states: dict[tuple[str, int], list[tuple[str, str | None]]] = {}
        for name, version, state, error in db.execute("SELECT name, version, state, error FROM worker_served"):
            states.setdefault((name, int(version)), []).append((state, error))
        now = time.time()
        db.execute("DELETE FROM served")
        for (name, version), seen in states.items():
            failed = [e for s, e in seen if s != "ready"]
            if failed:
                db.execute("INSERT INTO served (name, version, state, error, at) VALUES (?,?,?,?,?)",
                           (name, version, "failed", failed[0], now))
            elif len(seen) == len(pids):
                db.execute("INSERT INTO served (name, version, state, error, at) VALUES (?,?,?,?,?)",
                           (name, version, "ready", None, now))

    def report_served(self, generation: int, states: dict[tuple[str, int], tuple[str, str | None]],
                      worker: int | None = None) -> None:
        """Record which versions the server holds (``ready``/``failed``) as of ``generation``.

        ``worker`` (a pid) when the server runs several worker processes: each reports its own
        state and ``served``/``server.applied`` become their aggregate (see :meth:`_aggregate`).
        """
        now = time.time()
        if worker is not None:
            with self._runtime_tx() as db:
                db.execute("INSERT INTO workers (pid, applied, at) VALUES (?,?,?) ON CONFLICT(pid) DO UPDATE "
                           "SET applied = excluded.applied, at = excluded.at", (worker, generation, now))
                db.execute("DELETE FROM worker_served WHERE pid = ?", (worker,))
                db.executemany("INSERT INTO worker_served (pid, name, version, state, error) VALUES (?,?,?,?,?)",
                               [(worker, n, v, s, e) for (n, v), (s, e) in states.items()])
                self._aggregate(db)
            return
        with self._runtime_tx() as db:
            db.execute("DELETE FROM served")
            db.executemany("INSERT INTO served (name, version, state, error, at) VALUES (?,?,?,?,?)",
                           [(n, v, s, e, now) for (n, v), (s, e) in states.items()])
            db.execute("UPDATE server SET applied = ? WHERE id = 1", (generation,))

    def served(self) -> dict[tuple[str, int], tuple[str, str | None]]:
        rows = self._runtime().execute("SELECT name, version, state, error FROM served").fetchall()
        return {(r[0], int(r[1])): (r[2], r[3]) for r in rows}


def version_states(versions: list[VersionRecord], aliases: dict[str, int], serving: bool) -> dict[int, str]:
    """Each version's state as every view shows it: ``refused`` (by the promotion gate), ``serving`` or
    ``stopped`` (what production, a shadow or a canary points at, as the model is served or not), else
    ``registered``."""
    live = {aliases.get(PRODUCTION), aliases.get(SHADOW), aliases.get(CANARY)} - {None}
    return {v.version: "refused" if v.status == "refused" else
            ("serving" if serving else "stopped") if v.version in live else "registered" for v in versions}


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(f"model name {name!r} is not valid: use 1-64 letters, digits, '.', '-' or '_', "
                           "starting with a letter or digit")


def version_number(ref: int | str | None) -> int | None:
    """``ref`` as a version number (an int, or a string of ASCII digits); ``None`` when it is ``None``
    or an alias name. Anything else (a float, a bool) is refused."""
    if ref is None or (isinstance(ref, str) and not (ref.isascii() and ref.isdigit())):
        return None
    if isinstance(ref, str):
        return int(ref)
    if isinstance(ref, numbers.Integral) and not isinstance(ref, bool):
        return int(ref)
    raise InvalidInput(f"a version is a number or an alias name, got {ref!r}")


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque string; ``None`` if there is no such process.

    A PID is reused once its process is gone; the PID and its start time together name one process.
    Linux: the boot id and field 22 of ``/proc/PID/stat`` (clock ticks since boot); elsewhere the
    start time ``ps`` reports.
    """
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        try:
            stat = (proc / str(pid) / "stat").read_bytes()
            boot = (proc / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
        except OSError:
            return None
        # field 2 (the command name) is in parentheses and may hold spaces: count after the last ')'
        fields = stat[stat.rindex(b")") + 2:].split()
        return f"{boot}:{fields[19].decode()}"  # fields[0] is field 3, so field 22 is fields[19]
    try:
        done = subprocess.run(["ps", "-o", "lstart=", "-p", str(int(pid))], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def default_home() -> Path:
    """The directory of the store used when none is named: ``$NBDEPLOY_HOME``, else ``./.nbdeploy``
    (for a PostgreSQL URL, this machine's directory of that store)."""
    return database.locate(None).directory


def store_path(home: str | os.PathLike[str] | None = None) -> Path:
    """The directory of the store ``home`` names (default :func:`default_home`): the store itself, or
    this machine's directory of a PostgreSQL store."""
    return database.locate(home).directory


def open_store(home: str | os.PathLike[str] | None = None) -> Store:
    """The existing store at ``home`` (default :func:`default_home`); never creates one."""
    where = database.locate(home)
    if where.is_postgres:
        if not store_format.exists(database.connect(where, "registry")):
            raise NotFound(f"no nbdeploy store in {where.shown} (nbdeploy creates one there on the first deploy)")
        return Store(where.text)
    if not (where.directory / DB_FILE).is_file():
        raise NotFound(f"no nbdeploy store at {where.directory} (pass home=, or set NBDEPLOY_HOME)")
    return Store(where.text)


@contextmanager
def _transaction(conn: Any) -> Iterator[Any]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
