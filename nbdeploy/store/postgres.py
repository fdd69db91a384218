"""The store on PostgreSQL: a connection that speaks the store's SQL, over a psycopg 3 pool.

The store's modules write one SQL, the SQLite dialect the embedded store runs as it is. A
:class:`Session` takes that SQL on PostgreSQL, translating each statement once (cached) where the
dialects differ:

* ``?`` placeholders become ``%s``;
* ``INSERT OR IGNORE`` becomes ``INSERT ... ON CONFLICT DO NOTHING``, ``INSERT OR REPLACE`` an
  upsert on the table's primary key (:data:`KEYS`);
* ``BEGIN IMMEDIATE`` (SQLite's "take the write lock now") becomes ``BEGIN`` plus a transaction-level
  advisory lock, one per :class:`Session` scope (the registry's, the log's): writers of one scope
  take turns, as on SQLite, so read-modify-write steps (the next version number, an alias move, a
  rollup's latency histogram) stay exact across processes and machines; readers never wait;
* an ``INSERT`` into a table keyed by a generated ``id`` returns it (``lastrowid``);
* ``label`` columns hold any JSON value (a class name, a number) as on SQLite, where a column may
  hold any type: PostgreSQL keeps them as JSON bytes, written and read back here.

Schemas are the SQLite ones translated by :func:`ddl` (types, generated keys), so a table is
declared once. A statement outside ``BEGIN ... COMMIT`` borrows a pooled connection for itself
(autocommit), a transaction holds one until it ends. Results are fetched whole.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from nbdeploy.errors import InvalidInput, Unavailable

# psycopg is imported on first use (:func:`load`): a SQLite store's processes, the server's log writer
# among them, never pay its ≈ 20 MB and its import time. These names are set then.
psycopg: Any = None
pq: Any = None
ConnectionPool: Any = None
PoolTimeout: Any = None
OutOfReach: Any = None
_load_lock = threading.Lock()


def load() -> bool:
    """Import psycopg and its pool (once); False when the ``postgres`` extra is not installed."""
    global psycopg, pq, ConnectionPool, PoolTimeout, OutOfReach
    if psycopg is not None:
        return True
    with _load_lock:
        if psycopg is not None:
            return True
        try:
            import psycopg as driver
            from psycopg import pq as driver_pq
            from psycopg_pool import ConnectionPool as Pool
            from psycopg_pool import PoolTimeout as Timeout
        except ImportError:  # the PostgreSQL backend is an extra: pip install 'nbdeploy[postgres]'
            return False

        class _OutOfReach(driver.OperationalError, Unavailable):
            """The store's database cannot be reached now (503): a database error to the store's own retries
            (:func:`is_transient`), a one-line error naming the URL (without its password) to a user."""

            def __init__(self, message: str) -> None:
                driver.OperationalError.__init__(self, message)
                self.message, self.status = message, Unavailable.status

            def __str__(self) -> str:
                return self.message

        _OutOfReach.__name__ = _OutOfReach.__qualname__ = "OutOfReach"
        pq, ConnectionPool, PoolTimeout, OutOfReach = driver_pq, Pool, Timeout, _OutOfReach
        psycopg = driver  # last: it says the others are set
    return True


SCHEMES = ("postgresql://", "postgres://")
POOL_SIZE = int(os.environ.get("NBDEPLOY_PG_POOL", "8"))  # connections per process and database
CONNECT_TIMEOUT_S = 10.0
# How long a statement waits for a pooled connection: while the database is out of reach, a label
# gets its 503 (and a background round its "trying again") in seconds, not half a minute
POOL_WAIT_S = float(os.environ.get("NBDEPLOY_PG_WAIT", "5"))
# Tables whose INSERT OR REPLACE needs a conflict target, and the generated-id tables (lastrowid).
KEYS = {"aliases": ("name", "alias"), "columns": ("model", "version"), "state": ("key",),
        "webhooks": ("name",), "models": ("name",)}
GENERATED_ID = {"alias_history", "runs", "canaries", "alerts"}
LABEL = "label"

_INSERT_RE = re.compile(r"^\s*INSERT\s+OR\s+(IGNORE|REPLACE)\s+INTO\s+(\w+)", re.IGNORECASE)
_COLUMNS_RE = re.compile(r"^\s*INSERT\s+(?:OR\s+\w+\s+)?INTO\s+(\w+)\s*\(([^)]*)\)", re.IGNORECASE)


def available() -> bool:
    return load()


def require() -> None:
    if not load():
        raise InvalidInput("a PostgreSQL store needs psycopg: pip install 'nbdeploy[postgres]'")


def redact(url: str) -> str:
    """``url`` without its password, to show in messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


# -- the SQL -----------------------------------------------------------------------------------
def ddl(script: str) -> list[str]:
    """SQLite ``CREATE`` statements as PostgreSQL ones: one table declaration for both backends.

    Types and generated keys are translated; an index on a table whose ``seq`` is SQLite's rowid
    gets ``seq`` as its last column, as SQLite's has implicitly."""
    out, rowid = [], set()
    for statement in script.split(";"):
        s = statement.strip()
        if not s:
            continue
        table = re.match(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", s, flags=re.I)
        if table and re.search(r"\bseq\s+INTEGER\s+PRIMARY\s+KEY\b", s, flags=re.I):
            rowid.add(table.group(1).lower())
        index = re.match(r"(CREATE\s+INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?\w+\s+ON\s+(\w+)\s*\()([^)]*)\)", s, flags=re.I)
        if index and index.group(2).lower() in rowid and "seq" not in index.group(3):
            # a SQLite index ends with the rowid (here ``seq``), so "newest rows of a model" is an index
            # scan there: PostgreSQL's needs the column named to scan in that order rather than sort
            s = f"{index.group(1)}{index.group(3)}, seq){s[index.end():]}"
        s = re.sub(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", "BIGSERIAL PRIMARY KEY", s, flags=re.I)
        s = re.sub(r"\bseq\s+INTEGER\s+PRIMARY\s+KEY\b", "seq BIGSERIAL PRIMARY KEY", s, flags=re.I)
        s = re.sub(r"\)\s*WITHOUT\s+ROWID\s*$", ")", s, flags=re.I)
        s = re.sub(r"\bINTEGER\b", "BIGINT", s)
        s = re.sub(r"\bREAL\b", "DOUBLE PRECISION", s)
        s = re.sub(r"\bBLOB\b", "BYTEA", s)
        s = re.sub(r"\blabel\s*([,)])", r"label BYTEA\1", s)  # untyped on SQLite: any JSON value here
        out.append(translate(s).sql)
    return out


class Statement:
    """One statement translated: its SQL and which parameters are labels (JSON-encoded here)."""

    __slots__ = ("begin", "labels", "returns_id", "sql", "width")

    def __init__(self, sql: str, labels: tuple[int, ...] = (), width: int = 0, returns_id: bool = False,
                 begin: str | None = None) -> None:
        self.sql, self.labels, self.width, self.returns_id, self.begin = sql, labels, width, returns_id, begin

    def params(self, params: Sequence[Any]) -> Sequence[Any]:
        if not self.labels or not params:
            return params
        out = list(params)
        for i in range(len(out)):
            if (i % self.width if self.width else i) in self.labels and out[i] is not None:
                out[i] = encode_label(out[i])
        return out


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> Statement:
    """The PostgreSQL form of one statement of the store's SQL (see the module's docstring)."""
    head = sql.strip().upper()
    if head in ("BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"):
        return Statement("BEGIN", begin="write")
    if head in ("BEGIN", "BEGIN DEFERRED"):
        return Statement("BEGIN ISOLATION LEVEL REPEATABLE READ", begin="read")
    if head.startswith("PRAGMA"):
        raise NotImplementedError(f"{sql!r} is SQLite's; the PostgreSQL store has no such setting")
    text, table = sql, None
    match = _INSERT_RE.match(text)
    if match:
        kind, table = match.group(1).upper(), match.group(2)
        text = re.sub(r"^\s*INSERT\s+OR\s+\w+\s+INTO", "INSERT INTO", sql, count=1, flags=re.I)
        if kind == "IGNORE":
            text = text.rstrip() + " ON CONFLICT DO NOTHING"
        else:
            columns = _columns(text)
            keys = KEYS.get(table.lower())
            if keys is None or columns is None:
                raise NotImplementedError(f"no conflict target known for {sql!r}")
            rest = [c for c in columns if c not in keys]
            text = text.rstrip() + f" ON CONFLICT ({', '.join(keys)}) DO " + (
                "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in rest) if rest else "NOTHING")
    labels: tuple[int, ...] = ()
    width = 0
    columns = _columns(text)
    if columns is not None and LABEL in columns:
        labels, width = (columns.index(LABEL),), len(columns)
    elif re.search(r"\bSET\s+(?:.*,\s*)?label\s*=\s*\?", text, flags=re.I | re.S):
        before = text[:re.search(r"\blabel\s*=\s*\?", text, flags=re.I).end()]
        labels = (_placeholders(before) - 1,)
    returns_id = False
    insert = _COLUMNS_RE.match(text)
    if insert and insert.group(1).lower() in GENERATED_ID and "RETURNING" not in text.upper():
        text, returns_id = text.rstrip() + " RETURNING id", True
    return Statement(_placeholder_style(text), labels, width, returns_id)


def _columns(sql: str) -> list[str] | None:
    match = _COLUMNS_RE.match(sql)
    return None if match is None else [c.strip().strip('"').lower() for c in match.group(2).split(",")]


def _placeholders(sql: str) -> int:
    return sum(1 for _ in _tokens(sql) if _ == "?")


def _tokens(sql: str) -> Iterator[str]:
    """The characters of ``sql`` outside quoted strings and names (those come back whole)."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = sql.index(c, i + 1)
            while j + 1 < n and sql[j + 1] == c:  # a doubled quote is a quote inside
                j = sql.index(c, j + 2)
            yield sql[i:j + 1]
            i = j + 1
        else:
            yield c
            i += 1


def _placeholder_style(sql: str) -> str:
    """``?`` to ``%s`` and a literal ``%`` to ``%%`` (psycopg's format), quoted text aside."""
    return "".join("%s" if t == "?" else "%%" if t == "%" else t.replace("%", "%%") if len(t) > 1 else t
                   for t in _tokens(sql))


def encode_label(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_label(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (bytes, memoryview)) else value


# -- rows --------------------------------------------------------------------------------------
class Row(tuple):
    """A row readable by position and by column name, like ``sqlite3.Row``."""

    _index: dict[str, int]

    def __new__(cls, values: Iterable[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    index = {n: i for i, n in enumerate(names)}
    labels = [i for i, n in enumerate(names) if n == LABEL]

    def make(values: Sequence[Any]) -> Row:
        if labels:
            values = list(values)
            for i in labels:
                values[i] = decode_label(values[i])
        return Row(values, index)

    return make


class Result:
    """What a statement returned, fetched whole (the cursor's connection goes back to the pool)."""

    __slots__ = ("_at", "lastrowid", "rowcount", "rows")

    def __init__(self, rows: list[Row], rowcount: int, lastrowid: int | None = None) -> None:
        self.rows, self.rowcount, self.lastrowid, self._at = rows, rowcount, lastrowid, 0

    def fetchone(self) -> Row | None:
        if self._at >= len(self.rows):
            return None
        self._at += 1
        return self.rows[self._at - 1]

    def fetchall(self) -> list[Row]:
        rest, self._at = self.rows[self._at:], len(self.rows)
        return rest

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


# -- connections -------------------------------------------------------------------------------
_POOLS: dict[tuple[int, str], Any] = {}
_POOLS_LOCK = threading.Lock()


def pool(url: str) -> Any:
    """This process's pool for ``url`` (a forked worker opens its own: connections are not shared).

    The first connection is made here, once, so a database out of reach is an error at once
    (``Unavailable``, naming the URL without its password) rather than a pool retrying in the back.
    """
    require()
    key = (os.getpid(), url)
    with _POOLS_LOCK:
        found = _POOLS.get(key)
        if found is not None:
            return found
        try:
            psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT_S)).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OutOfReach(f"cannot connect to {redact(url)}: {redact(reason)}") from None
        found = _POOLS[key] = ConnectionPool(
            url, min_size=1, max_size=max(2, POOL_SIZE), open=False, timeout=POOL_WAIT_S,
            kwargs={"autocommit": True, "row_factory": _row_factory, "connect_timeout": int(CONNECT_TIMEOUT_S),
                    "application_name": "nbdeploy"},
            check=ConnectionPool.check_connection, name=f"nbdeploy-{os.getpid()}")
        found.open(wait=False)
        return found


def renew(url: str) -> Any:
    """A new pool for ``url`` when the database answers a direct connection, else None.

    After an outage a pool reconnects with a growing backoff (seconds, then minutes); once the
    database is back, serving waits for none of it. The old pool is closed: connections still out
    are discarded when they come back.
    """
    try:
        psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT_S)).close()
    except psycopg.Error:
        return None
    key = (os.getpid(), url)
    with _POOLS_LOCK:
        old = _POOLS.pop(key, None)
    if old is not None:
        old.close(timeout=0)
    return pool(url)


def close_pools() -> None:
    """Close this process's pools (tests; a process that exits closes them anyway)."""
    with _POOLS_LOCK:
        for key in [k for k in _POOLS if k[0] == os.getpid()]:
            _POOLS.pop(key).close()


def lock_key(scope: str) -> int:
    """The advisory lock of one scope (a signed 64-bit key, stable across processes)."""
    return zlib.crc32(f"nbdeploy:{scope}".encode())


class Session:
    """A ``sqlite3.Connection`` look-alike on PostgreSQL for the store's modules (see the module docstring).

    One per thread, as with SQLite connections. ``scope`` names the write lock ``BEGIN IMMEDIATE``
    takes; ``lock_timeout_s`` bounds how long it waits for it (``LockNotAvailable``, transient), as a
    SQLite connection's busy timeout does (None: as long as it takes).
    """

    def __init__(self, url: str, scope: str, lock_timeout_s: float | None = None) -> None:
        self.url, self.scope = url, scope
        self.lock_timeout_ms = None if lock_timeout_s is None else max(1, int(lock_timeout_s * 1000))
        pool(url)  # connect now: a database out of reach is an error here, not at the first statement
        self._held: Any = None  # the connection of the open transaction

    @property
    def _pool(self) -> Any:
        return pool(self.url)  # looked up each time: a forked process must not use its parent's sockets

    @property
    def in_transaction(self) -> bool:
        return self._held is not None

    @property
    def redacted(self) -> str:
        return redact(self.url)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        statement = translate(sql)
        if statement.begin:
            return self._begin(statement)
        head = sql.lstrip()[:8].upper()
        if head.startswith(("COMMIT", "END", "ROLLBACK")):
            return self._end(head.startswith("ROLLBACK"))
        return self._run(lambda conn: _execute(conn, statement, params))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Result:
        statement = translate(sql)
        rows = [statement.params(p) for p in seq]
        if not rows:
            return Result([], 0)

        def run(conn: Any) -> Result:
            with conn.cursor() as cur:
                cur.executemany(statement.sql, rows)
                return Result([], cur.rowcount)

        return self._run(run)

    def executescript(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self.execute(statement)

    def copy_ignoring(self, table: str, columns: Sequence[str], rows: list[Sequence[Any]],
                      key: str = "id") -> int:
        """Bulk-insert ``rows`` with ``COPY`` through a temporary table, skipping rows whose ``key`` is
        there already; returns how many were new. Call it inside a transaction.

        The temporary table has the columns only (no defaults: the table's own sequence is drawn
        once per new row, in arrival order ``ord``), so a skipped row takes no number.
        """
        cols = ", ".join(columns)
        labels = [i for i, c in enumerate(columns) if c == LABEL]
        temp = f"nbdeploy_new_{table}"

        def run(conn: Any) -> Result:
            with conn.cursor() as cur:
                if cur.execute("SELECT to_regclass(%s)", (f"pg_temp.{temp}",)).fetchone()[0] is None:
                    cur.execute(f"CREATE TEMP TABLE {temp} ON COMMIT DELETE ROWS AS SELECT {cols} FROM {table} "
                                "WITH NO DATA")
                    cur.execute(f"ALTER TABLE {temp} ADD COLUMN ord BIGSERIAL")
                with cur.copy(f"COPY {temp} ({cols}) FROM STDIN") as copy:
                    for row in rows:
                        if labels:
                            row = list(row)
                            for i in labels:
                                if row[i] is not None:
                                    row[i] = encode_label(row[i])
                        copy.write_row(row)
                cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {temp} t WHERE NOT EXISTS "
                            f"(SELECT 1 FROM {table} x WHERE x.{key} = t.{key}) ORDER BY ord ON CONFLICT DO NOTHING")
                n = cur.rowcount
                cur.execute(f"TRUNCATE {temp}")
                return Result([], n)

        return self._run(run).rowcount

    def _run(self, work: Any) -> Result:
        if self._held is not None:
            return work(self._held)
        owner, conn = self._checkout()
        try:
            return work(conn)
        finally:
            owner.putconn(conn)

    def _checkout(self) -> tuple[Any, Any]:
        """A connection and the pool it goes back to. A pool that found the database gone retries with a
        growing backoff: once the database answers again, a new pool serves at once (:func:`renew`)."""
        try:
            owner = self._pool
            return owner, owner.getconn()
        except PoolTimeout as exc:
            fresh = renew(self.url)
            if fresh is None:
                raise OutOfReach(f"the store's database {redact(self.url)} is out of reach for now ({exc}); "
                                 "try again") from None
            return fresh, fresh.getconn()

    def _begin(self, statement: Statement) -> Result:
        if self._held is not None:
            raise psycopg.ProgrammingError("a transaction is already open on this session")
        owner, conn = self._checkout()
        try:
            conn.execute(statement.sql)
            if statement.begin == "write":
                if self.lock_timeout_ms is not None:
                    conn.execute(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.scope),))
        except BaseException:
            owner.putconn(conn)  # the pool rolls back what is left open
            raise
        self._held, self._owner = conn, owner
        return Result([], -1)

    def _end(self, rollback: bool) -> Result:
        conn, self._held = self._held, None
        if conn is None:
            return Result([], -1)
        try:
            conn.execute("ROLLBACK" if rollback else "COMMIT")
        finally:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:  # a broken connection: pool replaces it
                conn.close()
            self._owner.putconn(conn)
        return Result([], -1)

    def rollback_if_open(self) -> None:
        if self._held is not None:
            self._end(True)

    def close(self) -> None:
        self.rollback_if_open()


class Bound(Session):
    """The store's SQL on one connection its caller owns, inside the caller's transaction (``nbdeploy
    store copy`` writes a whole store in one): the same translation as a :class:`Session`, no pool."""

    def __init__(self, conn: Any) -> None:
        self.url, self.scope, self.lock_timeout_ms = "", "", None
        self._held = conn

    def _begin(self, statement: Statement) -> Result:
        raise psycopg.ProgrammingError("a bound session runs in its owner's transaction")

    def _end(self, rollback: bool) -> Result:
        raise psycopg.ProgrammingError("a bound session runs in its owner's transaction")

    def close(self) -> None:
        """The connection stays its owner's."""


def _execute(conn: Any, statement: Statement, params: Sequence[Any]) -> Result:
    with conn.cursor() as cur:
        cur.execute(statement.sql, tuple(statement.params(params)))
        rows = cur.fetchall() if cur.description is not None else []
        lastrowid = int(rows[0][0]) if statement.returns_id and rows else None
        return Result(rows, cur.rowcount, lastrowid)


def is_transient(exc: BaseException) -> bool:
    """A lost connection, a lock timeout or a serialization failure: worth trying again."""
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.errors.LockNotAvailable,
                            psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected))


def errors() -> tuple[type[BaseException], ...]:
    return (psycopg.Error,) if psycopg is not None else ()


def tables(db: Session) -> list[str]:
    """The store's tables (the public schema's)."""
    return [r[0] for r in db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                                     "current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name")]


def table_columns(db: Session, table: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                     "current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))]


def primary_key(db: Session, table: str) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = ?::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)", (table,))]


__all__ = ["SCHEMES", "Bound", "Row", "Session", "available", "close_pools", "ddl", "errors", "is_transient",
           "lock_key", "primary_key", "redact", "table_columns", "tables", "translate"]
