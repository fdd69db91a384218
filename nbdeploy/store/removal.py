"""Deleting from a store: a version, an alias or a whole model, and pruning old versions.

The one rule of what may go: anything an alias points at is deleted only when forced, and then the
aliases pointing at it go with it (``production`` too: the model then has nothing to serve and is
stopped). Planning (:func:`plan_delete`, :func:`plan_prune`) decides and refuses; :func:`remove`
carries a plan out, re-checking the rule inside its transaction, in this order:

1. ``nbdeploy.db``, in one transaction that bumps the store's generation, so a running server
   drops what went the next time it polls. A version's rows go from ``versions``, ``aliases``,
   ``served`` and ``worker_served``; its ``alias_history`` rows (and the history of other tables,
   such as canaries) stay, readable, and a rollback skips versions that no longer exist. A whole
   model's rows go from every table with a ``name`` column, so tables added later are covered.
   A running canary is ended first, as stopped, when either of its versions goes or the ``canary`` or
   ``production`` alias is removed (a stopped model's canary would otherwise never be judged again).
2. Its files (``models/<name>/<version>/``, or ``models/<name>/`` for the whole model).
On a PostgreSQL store the registry and the log share one database: step 1 also deletes the
version's rows of ``files`` (its model files), and the ``served``/``worker_served`` rows are
this machine's (``runtime.db``); step 2 clears this machine's cache of the files.

3. Its rows in the prediction log (``log.db``, or the log's tables): every table with a ``model`` column (and a
   ``version`` column, for a version), under the model's own name and its ``<name>@…`` names
   (shadow answers). Deleted in short transactions of :data:`BATCH` rows, like retention, so a
   server writing the log meanwhile never waits long. A prediction answered while the deletion runs
   may still be logged after it: once the running server has let the version go, :func:`sweep_log`
   deletes the rows its writer still had queued.

Version numbers are never given again (see :mod:`nbdeploy.store.numbering`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, replace
from typing import Any

from nbdeploy.errors import Conflict, InvalidInput, NotFound, did_you_mean
from nbdeploy.store import database, postgres
from nbdeploy.store.canary import STOPPED, current_canary, end_canary
from nbdeploy.store.logfile import connect
from nbdeploy.store.reader import LOG_FILE
from nbdeploy.store.registry import CANARY, PRODUCTION, Store, version_number
from nbdeploy.store.writes import transaction

BATCH = 2_000  # log rows per transaction: a few milliseconds of the log's write lock
# A version's rows in nbdeploy.db; history tables (alias_history, canaries) keep theirs. ``files`` is a
# PostgreSQL store's (its model files); ``served`` and ``worker_served`` are then in this machine's runtime.db.
VERSION_TABLES = ("versions", "aliases", "files", "served", "worker_served")


@dataclass(frozen=True)
class Removal:
    """What one delete or prune takes from one model (or, on a dry run, would take)."""

    name: str
    versions: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()  # aliases removed: those named, or those pointing at removed versions
    model: bool = False  # the whole model
    predictions: int = 0  # logged prediction rows (production and shadow answers) removed
    dry_run: bool = False

    @property
    def stops_serving(self) -> bool:
        """Whether the model is no longer served afterwards (the model, or its production alias, goes)."""
        return self.model or PRODUCTION in self.aliases

    def __str__(self) -> str:
        """``removed 'iris' versions 1, 2 and 40 logged predictions``; ``would remove …`` on a dry run."""
        verb = "would remove" if self.dry_run else "removed"
        if not (self.versions or self.model):
            return f"{verb} the {' and '.join(self.aliases)} alias of {self.name!r}" + self._serving()
        plural = "s" if len(self.versions) != 1 else ""
        listed = ", ".join(map(str, self.versions)) or "none"
        what = f"model {self.name!r} (version{plural} {listed})" if self.model else \
            f"{self.name!r} version{plural} {listed}"
        es = "es" if len(self.aliases) > 1 else ""
        aliases = f", its alias{es} {', '.join(self.aliases)}" if self.aliases else ""
        rows = f" and {self.predictions:,} logged prediction{'s' if self.predictions != 1 else ''}"
        return f"{verb} {what}{aliases}{rows}" + self._serving()

    def _serving(self) -> str:
        return ("; it would no longer be served" if self.dry_run else "; it is no longer served") \
            if self.stops_serving else ""


# -- planning: what goes, and the rule that refuses ----------------------------------------
def plan_delete(store: Store, name: str, version: int | str | None = None, *, alias: str | None = None,
                force: bool = False) -> Removal:
    """What deleting ``version`` of ``name`` (or its ``alias``, or with neither the whole model) removes.

    Refuses (:class:`Conflict`) what an alias points at unless ``force``: the error names the alias.
    """
    store.require_model(name)
    aliases = store.aliases(name)
    if alias is not None:
        if version is not None:
            raise InvalidInput("give a version or an alias to delete, not both")
        if alias not in aliases:
            raise NotFound(f"model {name!r} has no {alias!r} alias{did_you_mean(alias, aliases)}; "
                           f"aliases: {', '.join(sorted(aliases)) or 'none'}")
        if alias == PRODUCTION and not force:
            raise Conflict(f"'production' is what /v2/models/{name} serves (version {aliases[alias]}): removing it "
                           f"stops serving {name!r}; pass force=True (--force) to remove it")
        return _counted(store, Removal(name, aliases=(alias,)))
    if version is None:
        numbers = tuple(v.version for v in store.versions(name))
        _refuse_aliased(name, numbers, aliases, force, whole=True)
        return _counted(store, Removal(name, numbers, tuple(sorted(aliases)), model=True))
    number = version_number(version)
    if number is None:
        raise InvalidInput(f"a version to delete is a number, got {version!r}; to remove the alias {version!r} "
                           f"pass alias={version!r} (--alias {version})")
    store.version(name, number)  # NotFound, listing what there is
    _refuse_aliased(name, (number,), aliases, force)
    hit = tuple(sorted(a for a, v in aliases.items() if v == number))
    return _counted(store, Removal(name, (number,), hit))


def plan_prune(store: Store, name: str | None = None, *, keep: int) -> list[Removal]:
    """Per model (or only ``name``): the versions beyond the newest ``keep`` that no alias points at."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise InvalidInput(f"keep is how many of the newest versions of each model to keep (0 or more), got {keep!r}")
    if name is not None:
        store.require_model(name)
    plans = []
    for model in [name] if name is not None else store.model_names():
        numbers = sorted(v.version for v in store.versions(model))
        kept = set(numbers[len(numbers) - keep:] if keep else ()) | set(store.aliases(model).values())
        gone = tuple(v for v in numbers if v not in kept)
        if gone:
            plans.append(_counted(store, Removal(model, gone)))
    return plans


def _refuse_aliased(name: str, numbers: tuple[int, ...], aliases: dict[str, int], force: bool,
                    whole: bool = False) -> None:
    """The one rule: what an alias points at goes only when forced."""
    hit = {a: v for a, v in sorted(aliases.items()) if v in numbers}
    if not hit or force:
        return
    pointing = ", ".join(f"{a} -> {v}" for a, v in hit.items())
    if whole:
        raise Conflict(f"model {name!r} has aliases ({pointing}): deleting it removes every version, its files and "
                       "its logged predictions, and stops serving it; pass force=True (--force) to delete it")
    stops = f"; removing production stops serving {name!r}" if PRODUCTION in hit else ""
    number = numbers[0]
    move = ", ".join(f"%deploy promote {name} VERSION" + (f" --alias {a}" if a != PRODUCTION else "") for a in hit)
    raise Conflict(f"version {number} of {name!r} is what its {' and '.join(hit)} alias{'es' if len(hit) > 1 else ''} "
                   f"point{'' if len(hit) > 1 else 's'} at ({pointing}): move the alias first ({move}), or pass "
                   f"force=True (--force) to delete it and remove the alias too{stops}")


def _counted(store: Store, plan: Removal) -> Removal:
    return replace(plan, predictions=_log_rows(store.location, plan, delete=False), dry_run=True)


# -- carrying a plan out -----------------------------------------------------------------
def remove(store: Store, plan: Removal) -> Removal:
    """Delete what ``plan`` names: registry rows (one transaction), files, then log rows. Returns what went.

    Refuses (:class:`Conflict`) when an alias moved onto a planned version since it was planned.
    """
    name = plan.name
    running = current_canary(store, name)
    if running is not None and not plan.model:  # (the rows of a whole model all go)
        # a canary compares two versions: with one of them gone, or the alias of either arm, it ends
        if {running.version, running.production} & set(plan.versions):
            gone = running.version if running.version in plan.versions else running.production
            end_canary(store, name, STOPPED, f"version {gone} was deleted")
        elif arm := next((a for a in (CANARY, PRODUCTION) if a in plan.aliases), None):
            end_canary(store, name, STOPPED, f"its {arm} alias was deleted")
    with store._tx() as db:
        aliases = {a: int(v) for a, v in db.execute("SELECT alias, version FROM aliases WHERE name = ?", (name,))}
        moved = sorted(a for a, v in aliases.items() if (plan.model or v in plan.versions) and a not in plan.aliases)
        if moved:
            raise Conflict(f"the {', '.join(moved)} alias of {name!r} moved onto a version being deleted "
                           f"({', '.join(f'{a} -> {aliases[a]}' for a in moved)}) meanwhile; nothing was deleted")
        _delete_registry_rows(db, plan)
        store._bump(db)
    if store.where.is_postgres:  # this machine's record of what its server runs
        with store._runtime_tx() as runtime:
            _delete_registry_rows(runtime, plan)
    folder = store.home / "models" / name
    for path in [folder] if plan.model else [folder / str(v) for v in plan.versions]:
        shutil.rmtree(path, ignore_errors=True)
    predictions = _log_rows(store.location, plan, delete=True) if plan.versions or plan.model else 0
    return replace(plan, predictions=predictions, dry_run=False)


def sweep_log(home: str | os.PathLike[str], plan: Removal, *, settle: float = 0.2, timeout: float = 5.0) -> Removal:
    """Delete the log rows of ``plan`` that the server's writer committed after :func:`remove` (answers
    given just before the server let the version go wait in its queue a moment): sweep until one sweep
    finds nothing, at most ``timeout`` seconds. Returns ``plan`` with those rows counted too.

    ``home`` is the store's location (``store.location``: a directory or a PostgreSQL URL)."""
    if not (plan.versions or plan.model):
        return plan
    found, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(settle)
        late = _log_rows(home, plan, delete=True)
        found += late
        if not late:
            break
    return replace(plan, predictions=plan.predictions + found)


def _delete_registry_rows(db: Any, plan: Removal) -> None:
    """The registry rows of ``plan`` in ``db`` (the shared tables, or a PostgreSQL store's runtime.db)."""
    name = plan.name
    present = _tables(db)
    if plan.model:
        for table in _tables_with(db, "name"):  # every table keyed by model name, those added later too
            db.execute(f'DELETE FROM "{table}" WHERE name = ?', (name,))
        return
    marks = ",".join("?" * len(plan.versions))
    for table in VERSION_TABLES:
        if plan.versions and table in present:
            db.execute(f'DELETE FROM "{table}" WHERE name = ? AND version IN ({marks})', (name, *plan.versions))
    if "aliases" in present:
        for alias in plan.aliases:
            db.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
    if PRODUCTION in plan.aliases and "models" in present:  # nothing left to serve: stopped, until a promotion
        db.execute("UPDATE models SET serving = 0 WHERE name = ?", (name,))


def _tables(db: Any) -> list[str]:
    """The tables of ``db`` (a SQLite connection or a PostgreSQL session)."""
    if database.is_postgres(db):
        return postgres.tables(db)
    return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                     "AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def _columns(db: Any, table: str) -> set[str]:
    if database.is_postgres(db):
        return set(postgres.table_columns(db, table))
    return {r[1] for r in db.execute(f'PRAGMA table_info("{table}")')}


def _tables_with(db: Any, *columns: str) -> list[str]:
    """The tables of ``db`` that have every one of ``columns``."""
    return [t for t in _tables(db) if set(columns) <= _columns(db, t)]


def _open_log(home: str | os.PathLike[str]) -> Any:
    """A connection to the store's log (a session of the log's scope on PostgreSQL); None when there is none."""
    where = database.locate(home)
    if where.url is not None:
        db = postgres.Session(where.url, "log")
        return db if "predictions" in postgres.tables(db) else None
    path = where.directory / LOG_FILE
    return connect(path) if path.exists() else None


def _log_rows(home: str | os.PathLike[str], plan: Removal, *, delete: bool) -> int:
    """The prediction rows of ``plan`` in the log (deleting them, and every other row of it, with ``delete``).
    ``home`` is the store's location."""
    if not (plan.versions or plan.model):
        return 0
    db = _open_log(home)
    if db is None:
        return 0
    try:
        counted = 0
        for table in _tables_with(db, "model") if delete else ["predictions"]:
            columns = _columns(db, table)
            names = [m for (m,) in db.execute(f'SELECT DISTINCT model FROM "{table}"')
                     if m == plan.name or str(m).startswith(plan.name + "@")]  # <name>@shadow: shadow answers
            if not names:
                continue
            where = f"model IN ({','.join('?' * len(names))})"
            params: list[object] = list(names)
            if not plan.model:
                if "version" not in columns:
                    continue
                where += f" AND version IN ({','.join('?' * len(plan.versions))})"
                params += plan.versions
            n = _delete(db, table, where, params) if delete else \
                int(db.execute(f'SELECT COUNT(*) FROM "{table}" WHERE {where}', params).fetchone()[0])
            if table == "predictions":
                counted = n
        return counted
    finally:
        db.close()


def _row_key(db: Any, table: str) -> str:
    """What addresses one row of ``table`` in a ``DELETE ... IN (SELECT ...)``: its rowid (SQLite), else its
    primary key's columns (a ``WITHOUT ROWID`` table, PostgreSQL), else PostgreSQL's ``ctid``."""
    if database.is_postgres(db):
        key = postgres.primary_key(db, table)
        return ", ".join(f'"{c}"' for c in key) if key else "ctid"
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
    if "WITHOUT ROWID" in sql.upper():  # no rowid: address rows by their primary key
        return ", ".join(f'"{c}"' for _, c in sorted((r[5], r[1]) for r in db.execute(f'PRAGMA table_info("{table}")')
                                                     if r[5]))
    return "rowid"


def _delete(db: Any, table: str, where: str, params: list[object]) -> int:
    """Delete the rows matching ``where`` in short transactions; how many went."""
    key = _row_key(db, table)
    total = 0
    while True:
        with transaction(db):
            n = db.execute(f'DELETE FROM "{table}" WHERE ({key}) IN (SELECT {key} FROM "{table}" WHERE {where} '
                           f"LIMIT {BATCH})", params).rowcount
        total += n
        if n < BATCH:
            return total
