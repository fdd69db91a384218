"""Copy a whole store to another backend: ``nbdeploy store copy SRC DST``.

A store is a directory (SQLite: ``nbdeploy.db``, ``log.db``, ``models/``) or a PostgreSQL URL (every
table, and the version files in its ``files`` table). :func:`copy_store` copies one into another,
either way and also between two of a kind: every shared registry table, every prediction log table
and every version's files. What one machine runs (its server's record, its workers) is not part of
a store's shared state and is not copied.

* The destination must be empty (no versions, predictions or history): anything else is refused
  before a byte is written. It is created when it does not exist yet.
* The source is read in one consistent snapshot per database (SQLite: a read transaction on each
  file; PostgreSQL: one ``REPEATABLE READ`` transaction), and never written.
* Keys are kept as they are (``predictions.seq``, ``alias_history.id``, ``runs.id`` ...), so history
  keeps its order, and the destination never gives an id again that the source gave.
* Every file is checked against its recorded sha256 before it is written: a changed file is refused.
* Large tables go in batches (:data:`BATCH_ROWS`), with ``COPY`` into PostgreSQL.
* The copy is verified before it is committed: row counts and a checksum of every table (its rows
  in key order, values normalised so both backends give the same digest), and every file's sha256.
  A difference rolls the destination back and raises :class:`CopyError`, naming the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from nbdeploy.errors import Conflict, NbdeployError, NotFound
from nbdeploy.store import database, logfile, postgres
from nbdeploy.store import format as store_format
from nbdeploy.store.files import private_dir, write_private
from nbdeploy.store.registry import DB_FILE, SCHEMA, IntegrityError, Store

try:
    import psycopg
except ImportError:  # the PostgreSQL backend is an extra; a SQLite-only copy needs none of it
    psycopg = None  # type: ignore[assignment]

BATCH_ROWS = 5_000  # rows read, written and checked at a time: bounded memory for a log of any size
LOG_FILE = "log.db"
_TABLE_RE = re.compile(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)
# The shared tables, registry first: read from the schemas, so a table added there is copied too.
REGISTRY_TABLES = tuple(_TABLE_RE.findall(SCHEMA))
LOG_TABLES = tuple(_TABLE_RE.findall(logfile.TABLES))
TABLES = REGISTRY_TABLES + LOG_TABLES
LABEL = postgres.LABEL


class CopyError(NbdeployError):
    """A copy that could not be made, or whose result differs from its source (nothing is kept)."""

    status = 500


class DestinationNotEmpty(Conflict):
    """The destination already holds a store's data: a copy never merges into it (409)."""


@dataclass(frozen=True)
class TableCopy:
    """One table copied: its rows and checksum in the source, and whether the destination has the same."""

    name: str
    rows: int
    checksum: str
    ok: bool


@dataclass
class CopyReport:
    """What :func:`copy_store` copied and verified; ``str(report)`` is a short summary."""

    source: str
    destination: str
    format: int
    tables: list[TableCopy] = field(default_factory=list)
    files: int = 0
    file_bytes: int = 0
    files_ok: bool = True
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def ok(self) -> bool:
        return self.files_ok and all(t.ok for t in self.tables)

    def table(self, name: str) -> TableCopy:
        return next(t for t in self.tables if t.name == name)

    def __str__(self) -> str:
        rate = f", {self.rows / self.seconds:,.0f} rows/s" if self.seconds > 0 else ""
        lines = [f"copied {self.source} -> {self.destination} (format {self.format}) in {self.seconds:.1f} s{rate}",
                 f"  {'table':<16}{'rows':>12}  checksum"]
        for t in self.tables:
            lines.append(f"  {t.name:<16}{t.rows:>12,}  {t.checksum[:16]} {'ok' if t.ok else 'DIFFERS'}")
        lines.append(f"  {'files':<16}{self.files:>12,}  {_size(self.file_bytes)}, sha256 "
                     f"{'ok' if self.files_ok else 'DIFFERS'}")
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


# -- the two backends, as the copy sees them -------------------------------------------------------
class _Side:
    """One store opened for the copy: tables read in key order, rows written in batches, version files."""

    shown: str
    json_labels = False  # PostgreSQL keeps a label as JSON bytes; SQLite as the value itself

    def tables(self) -> set[str]:
        raise NotImplementedError

    def columns(self, table: str) -> list[str]:
        raise NotImplementedError

    def key(self, table: str) -> list[str]:
        raise NotImplementedError

    def batches(self, table: str, columns: Sequence[str], key: Sequence[str]) -> Iterator[list[tuple[Any, ...]]]:
        raise NotImplementedError

    def count(self, table: str, where: str = "") -> int:
        raise NotImplementedError

    def high(self, table: str, key: Sequence[str]) -> int:
        """The highest generated id the table ever gave (0 when it generates none)."""
        raise NotImplementedError

    def begin_read(self) -> None:
        """Start the source's snapshot: every read after this sees the store as it was now."""
        raise NotImplementedError

    def files(self, name: str, version: int, recorded: dict[str, str]) -> dict[str, bytes]:
        """The files of a version named in ``recorded`` (filename -> sha256; ``""`` for none recorded)."""
        raise NotImplementedError

    def begin_write(self) -> None:
        raise NotImplementedError

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def clear(self, table: str) -> None:
        raise NotImplementedError

    def raise_high(self, table: str, key: Sequence[str], value: int) -> None:
        raise NotImplementedError

    def put_files(self, name: str, version: int, files: dict[str, bytes]) -> None:
        raise NotImplementedError

    def stored_files(self, name: str, version: int) -> dict[str, str]:
        """What the destination now holds for a version: filename -> sha256 of its bytes."""
        raise NotImplementedError

    def stamp(self, version: int) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SqliteSide(_Side):
    """A store directory: ``nbdeploy.db`` (registry) and ``log.db`` (the log), each its own connection."""

    def __init__(self, home: Path, *, write: bool) -> None:
        self.home, self.shown = home, str(home)
        self.conns: dict[str, sqlite3.Connection] = {}
        paths = {"registry": home / DB_FILE, "log": home / LOG_FILE}
        for scope, path in paths.items():
            if write:
                conn = logfile.connect(path) if scope == "log" else sqlite3.connect(path, timeout=30,
                                                                                     isolation_level=None)
                if scope == "log":
                    logfile.prepare(conn)
            elif path.is_file():
                # read-only: the source is never written, not even by a migration
                conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30,
                                       isolation_level=None)
            else:
                continue
            self.conns[scope] = conn
        self._tables = {t: scope for scope, conn in self.conns.items()
                        for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def conn(self, table: str) -> sqlite3.Connection:
        return self.conns[self._tables.get(table, "log" if table in LOG_TABLES else "registry")]

    def tables(self) -> set[str]:
        return set(self._tables)

    def columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn(table).execute(f'PRAGMA table_info("{table}")')]

    def key(self, table: str) -> list[str]:
        info = list(self.conn(table).execute(f'PRAGMA table_info("{table}")'))
        key = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
        return key or [r[1] for r in info]  # no primary key (incidents): every column orders it

    def batches(self, table: str, columns: Sequence[str], key: Sequence[str]) -> Iterator[list[tuple[Any, ...]]]:
        cur = self.conn(table).execute(f"SELECT {_names(columns)} FROM \"{table}\" ORDER BY {_names(key)}")
        while batch := cur.fetchmany(BATCH_ROWS):
            yield batch

    def count(self, table: str, where: str = "") -> int:
        return int(self.conn(table).execute(f'SELECT COUNT(*) FROM "{table}" {where}').fetchone()[0])

    def high(self, table: str, key: Sequence[str]) -> int:
        conn = self.conn(table)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() is None:
            return 0
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        return int(row[0]) if row else 0

    # -- the source: a snapshot, files on disk
    def begin_read(self) -> None:
        for conn in self.conns.values():
            conn.execute("BEGIN")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot starts at the first read

    def files(self, name: str, version: int, recorded: dict[str, str]) -> dict[str, bytes]:
        folder = self.home / "models" / name / str(version)
        found = {}
        for filename in recorded:
            path = folder / filename
            if path.is_file():
                found[filename] = path.read_bytes()
        return found

    # -- the destination: one write transaction per file, version directories made aside and moved in
    def begin_write(self) -> None:
        self.made: list[Path] = []
        for conn in self.conns.values():
            conn.execute("BEGIN IMMEDIATE")

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join("?" * len(columns))
        self.conn(table).executemany(f'INSERT INTO "{table}" ({_names(columns)}) VALUES ({marks})', rows)

    def clear(self, table: str) -> None:
        self.conn(table).execute(f'DELETE FROM "{table}"')

    def raise_high(self, table: str, key: Sequence[str], value: int) -> None:
        conn = self.conn(table)
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        if value < 1 or sql is None or "AUTOINCREMENT" not in sql[0].upper():
            return  # a plain INTEGER PRIMARY KEY numbers from its highest row, which the copy carries over
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))
        elif int(row[0]) < value:
            conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (value, table))

    def put_files(self, name: str, version: int, files: dict[str, bytes]) -> None:
        model_dir = private_dir(self.home / "models" / name)
        tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=model_dir))
        for filename, data in files.items():
            write_private(tmp / filename, data)
        final = model_dir / str(version)
        os.replace(tmp, final)  # the destination was checked empty: nothing is there to replace
        self.made.append(final)

    def stored_files(self, name: str, version: int) -> dict[str, str]:
        folder = self.home / "models" / name / str(version)
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}

    def stamp(self, version: int) -> None:
        store_format.stamp(self.conns["registry"], version)  # inside the transaction: committed with the rows

    def commit(self) -> None:
        for scope in ("log", "registry"):  # the registry last: a store whose log is there but not its index
            self.conns[scope].execute("COMMIT")  # is still empty to every reader and to a retried copy

    def rollback(self) -> None:
        for conn in self.conns.values():
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        for path in getattr(self, "made", []):
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


class _PostgresSide(_Side):
    """A PostgreSQL store, through a connection of its own (server-side cursors to read, ``COPY`` to write)."""

    json_labels = True

    def __init__(self, url: str) -> None:
        postgres.require()
        self.url, self.shown = url, postgres.redact(url)
        try:
            self.db = psycopg.connect(url, autocommit=False, connect_timeout=int(postgres.CONNECT_TIMEOUT_S),
                                      application_name="nbdeploy-copy")
        except psycopg.Error as exc:
            raise CopyError(f"cannot connect to {self.shown}: {_reason(exc)}") from None
        self.sql = postgres.Bound(self.db)  # the store's SQL (format, tables, keys) on this connection
        self._cursors = 0
        self._types: dict[str, dict[str, str]] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.db.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def tables(self) -> set[str]:
        return set(postgres.tables(self.sql))

    def types(self, table: str) -> dict[str, str]:
        if table not in self._types:
            self._types[table] = dict(self.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = %s ORDER BY ordinal_position", (table,)))
        return self._types[table]

    def columns(self, table: str) -> list[str]:
        return list(self.types(table))

    def key(self, table: str) -> list[str]:
        return postgres.primary_key(self.sql, table) or self.columns(table)

    def order(self, table: str, key: Sequence[str]) -> str:
        """``ORDER BY`` in SQLite's order: text by its bytes (``COLLATE "C"``), not by the database's locale."""
        types = self.types(table)
        return ", ".join(f'"{k}" COLLATE "C"' if types.get(k) == "text" else f'"{k}"' for k in key)

    def batches(self, table: str, columns: Sequence[str], key: Sequence[str]) -> Iterator[list[tuple[Any, ...]]]:
        self._cursors += 1
        with self.db.cursor(name=f"nbdeploy_copy_{self._cursors}") as cur:  # server-side: fetched a batch at a time
            cur.execute(f'SELECT {_names(columns)} FROM "{table}" ORDER BY {self.order(table, key)}')
            while batch := cur.fetchmany(BATCH_ROWS):
                yield batch

    def count(self, table: str, where: str = "") -> int:
        return int(self.execute(f'SELECT COUNT(*) FROM "{table}" {where}')[0][0])

    def sequence(self, table: str, key: Sequence[str]) -> str | None:
        if len(key) != 1:
            return None
        return self.execute("SELECT pg_get_serial_sequence(%s, %s)", (f'"{table}"', key[0]))[0][0]

    def high(self, table: str, key: Sequence[str]) -> int:
        seq = self.sequence(table, key)
        if seq is None:
            return 0
        last, called = self.execute(f"SELECT last_value, is_called FROM {seq}")[0]
        return int(last) if called else int(last) - 1

    # -- the source: one snapshot
    def begin_read(self) -> None:
        self.db.rollback()  # the transaction psycopg opened for the first look, so the next one is a snapshot
        self.db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.db.read_only = True
        self.execute("SELECT 1")  # the snapshot starts at the first statement

    def files(self, name: str, version: int, recorded: dict[str, str]) -> dict[str, bytes]:
        rows = self.execute("SELECT filename, sha256, data FROM files WHERE name = %s AND version = %s",
                            (name, version))
        found = {}
        for filename, sha, data in rows:
            if filename not in recorded:
                continue  # a file the registry does not know is never read, so not copied either
            if (recorded[filename] and sha != recorded[filename]) or hashlib.sha256(data).hexdigest() != sha:
                raise IntegrityError(f"{self.shown}: file {filename} of {name!r} version {version} does not "
                                     "match its recorded sha256 (it was changed after it was registered); "
                                     "refusing to copy it")
            found[filename] = bytes(data)
        return found

    # -- the destination: one transaction, writers of both scopes held off meanwhile
    def begin_write(self) -> None:
        self.db.rollback()  # psycopg begins a transaction at the next statement: the copy's one
        for scope in ("registry", "log"):
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (postgres.lock_key(scope),))

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        with self.db.cursor() as cur, cur.copy(f'COPY "{table}" ({_names(columns)}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)

    def clear(self, table: str) -> None:
        self.db.execute(f'DELETE FROM "{table}"')

    def raise_high(self, table: str, key: Sequence[str], value: int) -> None:
        """Move the table's id sequence past the ids copied in (and past the source's own high mark)."""
        seq = self.sequence(table, key)
        if seq is None:
            return
        top = self.execute(f'SELECT MAX("{key[0]}") FROM "{table}"')[0][0] or 0
        value = max(int(top), value)
        if value >= 1:
            self.db.execute("SELECT setval(%s, %s)", (seq, value))

    def put_files(self, name: str, version: int, files: dict[str, bytes]) -> None:
        with self.db.cursor() as cur:
            cur.executemany("INSERT INTO files (name, version, filename, sha256, data) VALUES (%s, %s, %s, %s, %s)",
                            [(name, version, f, hashlib.sha256(d).hexdigest(), d) for f, d in files.items()])

    def stored_files(self, name: str, version: int) -> dict[str, str]:
        rows = self.execute("SELECT filename, data FROM files WHERE name = %s AND version = %s", (name, version))
        return {f: hashlib.sha256(bytes(d)).hexdigest() for f, d in rows}

    def stamp(self, version: int) -> None:
        store_format.stamp(self.sql, version)  # on this connection: the format commits with the rows

    def commit(self) -> None:
        self.db.commit()
        # fresh statistics now rather than when autovacuum next looks: until then the planner takes the
        # copied log for empty and sorts a model's whole history for "its newest rows"
        self.db.autocommit = True
        self.db.execute("ANALYZE")

    def rollback(self) -> None:
        self.db.rollback()

    def close(self) -> None:
        self.db.close()


def _names(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return postgres.redact(text.splitlines()[0] if text else type(exc).__name__)


# -- checksums -----------------------------------------------------------------------------------
_PLAIN = frozenset({str, int, float, bytes, type(None)})  # values whose repr is the same from either backend


def _normal(value: Any) -> Any:
    """A value of another type as a plain one: bytes-like as bytes, a JSON label's value by its sorted JSON."""
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, bool):
        return int(value)
    return ("json", orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


class _Digest:
    """A table's row count and the sha256 of its rows in key order.

    Each row is hashed as the ``repr`` of its values, which both backends give alike: text as text,
    integers as integers, floats by ``repr`` (exact), bytes by their escaped form; labels decoded
    first (PostgreSQL keeps them as JSON bytes), so a label 1 and a label "1" stay apart.
    """

    def __init__(self, columns: Sequence[str], json_labels: bool) -> None:
        self.sha, self.rows = hashlib.sha256(), 0
        self.labels = [i for i, c in enumerate(columns) if c == LABEL] if json_labels else []

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        update, plain, labels = self.sha.update, _PLAIN.issuperset, self.labels
        for row in rows:
            if labels:
                values = list(row)
                for i in labels:
                    values[i] = postgres.decode_label(values[i])
                row = tuple(values)
            if not plain(map(type, row)):
                row = tuple(v if type(v) in _PLAIN else _normal(v) for v in row)
            update(repr(row).encode())
            update(b"\n")
        self.rows += len(rows)

    @property
    def hex(self) -> str:
        return self.sha.hexdigest()


def _relabel(rows: list[tuple[Any, ...]], labels: list[int], encode: bool) -> list[tuple[Any, ...]]:
    """Labels from one backend's form to the other's (JSON bytes on PostgreSQL, the value on SQLite)."""
    out = []
    for row in rows:
        row = list(row)
        for i in labels:
            if row[i] is not None:
                row[i] = postgres.encode_label(row[i]) if encode else postgres.decode_label(row[i])
        out.append(tuple(row))
    return out


# -- the copy ------------------------------------------------------------------------------------
def copy_store(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> CopyReport:
    """Copy the store at ``src`` into the empty (or new) store at ``dst``, verified; see the module docstring.

    Either may be a directory (SQLite) or a ``postgresql://`` URL. Raises :class:`DestinationNotEmpty`
    when ``dst`` holds data, :class:`~nbdeploy.store.registry.IntegrityError` when a source file does not
    match its recorded sha256, and :class:`CopyError` when the copy differs from its source; in every
    case the destination keeps nothing of the copy.
    """
    started = time.monotonic()
    source, target = database.locate(os.fspath(src)), database.locate(os.fspath(dst))
    if source.text == target.text or (not source.is_postgres and source.directory == target.directory):
        raise CopyError(f"the source and the destination are the same store ({source.shown})")
    try:
        return _copy(source, target, started)
    except NbdeployError:
        raise
    except (*database.Error, OSError) as exc:
        raise CopyError(f"copying {source.shown} to {target.shown} failed: {_reason(exc)}") from None


def _open_source(where: database.Location) -> _Side:
    if where.is_postgres:
        side: _Side = _PostgresSide(where.text)
        if "versions" not in side.tables():
            side.close()
            raise NotFound(f"no nbdeploy store in {where.shown}")
        return side
    if not (where.directory / DB_FILE).is_file():
        raise NotFound(f"no nbdeploy store at {where.directory}")
    return _SqliteSide(where.directory, write=False)


def _occupied(side: _Side, where: database.Location) -> dict[str, int]:
    """What the destination already holds, by table (empty: a store just created, or none at all)."""
    held = {}
    present = side.tables()
    for table in (*TABLES, "files"):
        if table not in present:
            continue
        # a store just created has its generation counter at 0 and nothing else
        where_sql = "WHERE NOT (key = 'generation' AND value = 0)" if table == "state" else ""
        n = side.count(table, where_sql)
        if n:
            held[table] = n
    if not where.is_postgres:
        models = where.directory / "models"
        versions = [p for p in models.glob("*/*") if not p.name.startswith(".")] if models.is_dir() else []
        if versions:
            held["models/ directories"] = len(versions)
    return held


def _check_empty(side: _Side, where: database.Location) -> None:
    held = _occupied(side, where)
    if held:
        listed = ", ".join(f"{t}: {n:,}" for t, n in held.items())
        raise DestinationNotEmpty(f"the destination store {where.shown} is not empty ({listed}); copy into a new, "
                                  "empty store (a new directory or an empty PostgreSQL database)")


def _peek_destination(where: database.Location) -> None:
    """Refuse a destination that holds data before anything is created or opened there (opening a store
    may migrate it)."""
    if where.is_postgres:
        side: _Side = _PostgresSide(where.text)
    else:
        if where.directory.exists() and not where.directory.is_dir():
            raise CopyError(f"the destination {where.directory} is a file, not a store directory")
        if not (where.directory / DB_FILE).is_file() and not (where.directory / LOG_FILE).is_file():
            _check_models_dir(where)
            return
        side = _SqliteSide(where.directory, write=False)
    try:
        _check_empty(side, where)
    finally:
        if isinstance(side, _PostgresSide):
            side.rollback()
        side.close()


def _check_models_dir(where: database.Location) -> None:
    models = where.directory / "models"
    if models.is_dir() and any(not p.name.startswith(".") for p in models.glob("*/*")):
        raise DestinationNotEmpty(f"the destination store {where.shown} is not empty (its models/ directory holds "
                                  "version files); copy into a new, empty store")


def _copy(source: database.Location, target: database.Location, started: float) -> CopyReport:
    src = _open_source(source)
    try:
        if isinstance(src, _PostgresSide):
            src_format = store_format.check(postgres.Session(source.text, "registry"), source.shown)
        else:
            src_format = store_format.check(src.conns["registry"], source.shown)
        _peek_destination(target)
        Store(target.text)  # creates the destination's tables (registry and, on PostgreSQL, the log)
        dst: _Side = _PostgresSide(target.text) if target.is_postgres else _SqliteSide(target.directory, write=True)
        try:
            report = CopyReport(source.shown, target.shown, src_format)
            src.begin_read()
            dst.begin_write()
            try:
                _check_empty(dst, target)  # again, under the destination's write locks: nobody came meanwhile
                _copy_tables(src, dst, report)
                _copy_files(src, dst, report)
                dst.stamp(src_format)
                dst.commit()
            except BaseException:
                dst.rollback()
                raise
        finally:
            dst.close()
    finally:
        src.close()
    report.seconds = time.monotonic() - started
    return report


def _copy_tables(src: _Side, dst: _Side, report: CopyReport) -> None:
    present, there = src.tables(), dst.tables()
    for table in TABLES:
        dst.clear(table)  # a new store's own rows (its generation counter)
        if table not in present:  # an older store, or a directory without a log yet: nothing to copy
            report.tables.append(TableCopy(table, 0, hashlib.sha256().hexdigest(), True))
            continue
        if table not in there:
            raise CopyError(f"{dst.shown} has no table {table}")
        wanted = set(dst.columns(table))
        columns = [c for c in src.columns(table) if c in wanted]
        missing = [c for c in src.columns(table) if c not in wanted]
        if missing:
            raise CopyError(f"{dst.shown} has no column {', '.join(missing)} in table {table}")
        key = [k for k in src.key(table) if k in wanted]
        labels = [i for i, c in enumerate(columns) if c == LABEL]
        recode = bool(labels) and src.json_labels != dst.json_labels
        before = _Digest(columns, src.json_labels)
        for batch in src.batches(table, columns, key):
            before.add(batch)
            dst.insert(table, columns, _relabel(batch, labels, dst.json_labels) if recode else batch)
        dst.raise_high(table, key, src.high(table, key))
        after = _Digest(columns, dst.json_labels)
        for batch in dst.batches(table, columns, key):
            after.add(batch)
        ok = (before.rows, before.hex) == (after.rows, after.hex)
        report.tables.append(TableCopy(table, before.rows, before.hex, ok))
        if not ok:
            raise CopyError(f"table {table} differs after copying ({before.rows:,} rows in {src.shown}, "
                            f"{after.rows:,} in {dst.shown}; checksums {before.hex[:16]} and {after.hex[:16]}): "
                            "nothing was kept")


def _copy_files(src: _Side, dst: _Side, report: CopyReport) -> None:
    """Every version's files, each checked against its recorded sha256 before it is written, and after."""
    versions = list(src.batches("versions", ["name", "version", "sha256", "meta"], ["name", "version"]))
    for batch in versions:
        for name, version, sha, meta_text in batch:
            meta = json.loads(meta_text)
            recorded = {"model.onnx": sha, **meta.get("files", {})}
            files = src.files(name, int(version), {**recorded, "model.json": ""})
            for filename, digest in recorded.items():
                if filename not in files:
                    raise IntegrityError(f"{src.shown}: file {filename} of {name!r} version {version} is missing; "
                                         f"it was registered with sha256 {digest}")
                if hashlib.sha256(files[filename]).hexdigest() != digest:
                    raise IntegrityError(f"{src.shown}: file {filename} of {name!r} version {version} does not "
                                         "match its recorded sha256 (it was changed after it was registered); "
                                         "refusing to copy it")
            if "model.json" in files:
                _check_model_json(src, name, int(version), sha, files["model.json"])
            dst.put_files(name, int(version), files)
            stored = dst.stored_files(name, int(version))
            if stored != {f: hashlib.sha256(d).hexdigest() for f, d in files.items()}:
                report.files_ok = False
                raise CopyError(f"the files of {name!r} version {version} differ after copying: nothing was kept")
            report.files += len(files)
            report.file_bytes += sum(len(d) for d in files.values())


def _check_model_json(src: _Side, name: str, version: int, sha: str, data: bytes) -> None:
    """``model.json`` has no checksum of its own in the registry: it must at least describe this version."""
    try:
        meta = json.loads(data)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or (meta.get("name"), meta.get("version"), meta.get("sha256")) != (
            name, version, sha):
        raise IntegrityError(f"{src.shown}: model.json of {name!r} version {version} does not describe that "
                             "version (it was changed after it was registered); refusing to copy it")


__all__ = ["BATCH_ROWS", "TABLES", "CopyError", "CopyReport", "DestinationNotEmpty", "TableCopy", "copy_store"]
