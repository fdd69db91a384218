"""The model registry: versions on disk, aliases and serving state in one SQLite database.

Layout under ``home``::

    nbdeploy.db                      index, aliases, serving state (WAL mode)
    models/<name>/<version>/model.onnx
    models/<name>/<version>/model.json

The kernel writes here; the server reads here and reports back what it loaded. Every change
that alters what should be served bumps ``generation`` so the server can poll one integer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdeploy.errors import InvalidInput, NbdeployError, NotFound

PRODUCTION = "production"
SHADOW = "shadow"  # the version that gets a copy of live traffic, answers logged, never returned
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")

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
CREATE TABLE IF NOT EXISTS server (
    id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, host TEXT NOT NULL,
    port INTEGER NOT NULL, started_at REAL NOT NULL, applied INTEGER NOT NULL DEFAULT -1);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, created_at REAL NOT NULL, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS served (
    name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, error TEXT,
    at REAL NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS workers (
    pid INTEGER PRIMARY KEY, applied INTEGER NOT NULL DEFAULT -1, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS worker_served (
    pid INTEGER NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, error TEXT,
    PRIMARY KEY (pid, name, version));
INSERT OR IGNORE INTO state (key, value) VALUES ('generation', 0);
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

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    def onnx_bytes(self) -> bytes:
        """The model file, refused unless it is the one registered (sha256)."""
        data = self.onnx_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise NbdeployError(f"{self.onnx_path} does not match its recorded sha256; refusing to load it", 500)
        return data


@dataclass(frozen=True)
class ServerRecord:
    pid: int
    host: str
    port: int
    started_at: float
    applied: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Store:
    """One ``NBDEPLOY_HOME``. Safe to share between threads; each thread gets its connection."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home or os.environ.get("NBDEPLOY_HOME") or ".nbdeploy").resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "models").mkdir(exist_ok=True)
        self.db_path = self.home / "nbdeploy.db"
        self._local = threading.local()
        self._conn().executescript(SCHEMA)  # idempotent; executescript manages its own transaction

    # -- connection -------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front, so read-modify-write cannot interleave."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE state SET value = value + 1 WHERE key = 'generation'")

    def generation(self) -> int:
        row = self._conn().execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
        return int(row[0])

    # -- versions ---------------------------------------------------------------------
    def register(self, name: str, onnx_bytes: bytes, meta: dict[str, Any], status: str = "registered",
                 files: dict[str, bytes] | None = None) -> int:
        """Store a new version of ``name``; returns its number. Nothing is left behind on failure.

        ``files`` are extra files kept beside the model (held-out data, the kernel-side estimator).
        """
        check_name(name)
        sha = hashlib.sha256(onnx_bytes).hexdigest()
        model_dir = self.home / "models" / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=model_dir))
        try:
            with self._tx() as db:
                row = db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
                version = int(row[0] or 0) + 1
                full_meta = {**meta, "name": name, "version": version, "sha256": sha}
                (tmp / "model.onnx").write_bytes(onnx_bytes)
                (tmp / "model.json").write_text(json.dumps(full_meta, indent=2, default=str))
                for filename, content in (files or {}).items():
                    if "/" in filename or filename.startswith(".") or filename.startswith("model."):
                        raise InvalidInput(f"cannot store an extra file named {filename!r}")
                    (tmp / filename).write_bytes(content)
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
        row = self._conn().execute(
            "SELECT * FROM versions WHERE name = ? AND version = ?", (name, int(version))
        ).fetchone()
        if row is None:
            known = [v.version for v in self.versions(name)]
            raise NotFound(f"model {name!r} has no version {version}"
                           + (f"; versions: {', '.join(map(str, known))}" if known else ""))
        return self._record(row)

    def versions(self, name: str) -> list[VersionRecord]:
        rows = self._conn().execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)).fetchall()
        return [self._record(r) for r in rows]

    def model_names(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM models ORDER BY name")]

    def require_model(self, name: str) -> None:
        if name not in self.model_names():
            import difflib

            close = difflib.get_close_matches(name, self.model_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise NotFound(f"no model named {name!r}{hint}")

    def set_status(self, name: str, version: int, status: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE versions SET status = ? WHERE name = ? AND version = ?", (status, name, version))
            self._bump(db)

    def _record(self, row: sqlite3.Row) -> VersionRecord:
        return VersionRecord(row["name"], row["version"], row["created_at"], row["sha256"], row["status"],
                             json.loads(row["meta"]), self.home / "models" / row["name"] / str(row["version"]))

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
        if not ALIAS_RE.match(alias):
            raise InvalidInput(
                f"alias {alias!r} is not valid: use letters, digits, '-' and '_', starting with a letter"
            )
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

    def alias_history(self, name: str, alias: str = PRODUCTION) -> list[int]:
        rows = self._conn().execute(
            "SELECT version FROM alias_history WHERE name = ? AND alias = ? ORDER BY id", (name, alias)
        ).fetchall()
        return [int(r[0]) for r in rows]

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
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO server (id, pid, host, port, started_at, applied) VALUES (1,?,?,?,?,-1)",
                       (pid, host, port, time.time()))

    def server(self) -> ServerRecord | None:
        row = self._conn().execute("SELECT * FROM server WHERE id = 1").fetchone()
        if row is None:
            return None
        return ServerRecord(row["pid"], row["host"], row["port"], row["started_at"], row["applied"])

    def clear_server(self, pid: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM server WHERE pid = ?", (pid,))
            db.execute("DELETE FROM served")
            db.execute("DELETE FROM workers")
            db.execute("DELETE FROM worker_served")

    # -- several worker processes behind one server (``nbdeploy serve --workers N``) ---------
    def add_worker(self, pid: int) -> None:
        """The server's parent announces a worker before it reports, so ``applied`` waits for it too."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO workers (pid, applied, at) VALUES (?, -1, ?)", (pid, time.time()))
            self._aggregate(db)

    def remove_worker(self, pid: int) -> None:
        """A worker that exited no longer holds ``applied`` back."""
        with self._tx() as db:
            db.execute("DELETE FROM workers WHERE pid = ?", (pid,))
            db.execute("DELETE FROM worker_served WHERE pid = ?", (pid,))
            self._aggregate(db)

    def workers(self) -> dict[int, int]:
        """Worker pid -> the generation it last applied (empty for a single-process server)."""
        return {int(r[0]): int(r[1]) for r in self._conn().execute("SELECT pid, applied FROM workers")}

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
            with self._tx() as db:
                db.execute("INSERT INTO workers (pid, applied, at) VALUES (?,?,?) ON CONFLICT(pid) DO UPDATE "
                           "SET applied = excluded.applied, at = excluded.at", (worker, generation, now))
                db.execute("DELETE FROM worker_served WHERE pid = ?", (worker,))
                db.executemany("INSERT INTO worker_served (pid, name, version, state, error) VALUES (?,?,?,?,?)",
                               [(worker, n, v, s, e) for (n, v), (s, e) in states.items()])
                self._aggregate(db)
            return
        with self._tx() as db:
            db.execute("DELETE FROM served")
            db.executemany("INSERT INTO served (name, version, state, error, at) VALUES (?,?,?,?,?)",
                           [(n, v, s, e, now) for (n, v), (s, e) in states.items()])
            db.execute("UPDATE server SET applied = ? WHERE id = 1", (generation,))

    def served(self) -> dict[tuple[str, int], tuple[str, str | None]]:
        rows = self._conn().execute("SELECT name, version, state, error FROM served").fetchall()
        return {(r[0], int(r[1])): (r[2], r[3]) for r in rows}


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(f"model name {name!r} is not valid: use 1-64 letters, digits, '.', '-' or '_', "
                           "starting with a letter or digit")
