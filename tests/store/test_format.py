"""The store's format version: stamped on new stores, checked on open; older stores migrate (on open when
every step is additive, else through `nbdeploy upgrade`), newer ones are refused."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

import nbdeploy
from nbdeploy.errors import NotFound
from nbdeploy.store import PRODUCTION, Store, open_store
from nbdeploy.store import format as store_format
from nbdeploy.store.format import FORMAT, Migration, StoreFormatError

# nbdeploy.db as nbdeploy made it before stores recorded a format (format 1), from an older release
# still: its server table has no proc_start column.
OLD_SCHEMA = """
CREATE TABLE versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, created_at REAL NOT NULL,
    sha256 TEXT NOT NULL, status TEXT NOT NULL, meta TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE models (name TEXT PRIMARY KEY, serving INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL);
CREATE TABLE aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (name, alias));
CREATE TABLE alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER, at REAL NOT NULL, kind TEXT NOT NULL DEFAULT 'set');
CREATE TABLE state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE server (
    id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, host TEXT NOT NULL,
    port INTEGER NOT NULL, started_at REAL NOT NULL, applied INTEGER NOT NULL DEFAULT -1);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, created_at REAL NOT NULL, summary TEXT NOT NULL);
CREATE TABLE served (
    name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, error TEXT,
    at REAL NOT NULL, PRIMARY KEY (name, version));
INSERT INTO state (key, value) VALUES ('generation', 7);
"""


def old_store(home: Path, versions: int = 3) -> Path:
    """A format-1 store holding ``iris`` versions 1..``versions`` (files and rows), production -> the last."""
    home.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(home / "nbdeploy.db", isolation_level=None)
    db.executescript(OLD_SCHEMA)
    for v in range(1, versions + 1):
        body = f"model {v}".encode()
        sha = hashlib.sha256(body).hexdigest()
        meta = {"name": "iris", "version": v, "sha256": sha, "files": {}}
        folder = home / "models" / "iris" / str(v)
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(body)
        (folder / "model.json").write_text(json.dumps(meta))
        db.execute("INSERT INTO versions VALUES (?,?,?,?,?,?)", ("iris", v, time.time(), sha, "registered",
                                                                 json.dumps(meta)))
        db.execute("INSERT INTO alias_history (name, alias, version, at) VALUES ('iris', 'production', ?, ?)",
                   (v, time.time()))
    db.execute("INSERT INTO models VALUES ('iris', 0, ?)", (time.time(),))
    db.execute("INSERT INTO aliases VALUES ('iris', 'production', ?, ?)", (versions, time.time()))
    db.execute("INSERT INTO runs (name, created_at, summary) VALUES ('iris', 0, '{\"score\": 0.9}')")
    db.close()
    return home


def user_version(home: Path) -> int:
    db = sqlite3.connect(home / "nbdeploy.db")
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_new_store_records_this_nbdeploys_format(tmp_path: Path) -> None:
    Store(tmp_path)
    assert user_version(tmp_path) == FORMAT
    assert str(nbdeploy.upgrade(str(tmp_path))) == (f"the store at {tmp_path} has format {FORMAT}, this nbdeploy's: "
                                                     "nothing to upgrade")


def test_an_old_store_opens_with_its_data_intact_and_is_upgraded_additively(tmp_path: Path) -> None:
    home = old_store(tmp_path / "old")
    store = open_store(home)
    assert user_version(home) == FORMAT and store.upgraded  # migrated on open: every step is additive
    assert [v.version for v in store.versions("iris")] == [1, 2, 3] and store.aliases("iris") == {PRODUCTION: 3}
    assert store.resolve("iris").onnx_bytes() == b"model 3" and store.generation() == 7
    assert store.runs("iris")[0]["score"] == 0.9 and store.previous_version("iris") == 2
    assert store.server() is None  # its server table gained the columns added since
    nbdeploy.delete("iris", 2, home=str(home))
    assert store.register("iris", b"model 4", {}) == 4
    nbdeploy.delete("iris", 4, home=str(home))
    assert store.register("iris", b"model 5", {}) == 5  # numbers are not given again in an upgraded store either
    assert Store(home).upgraded == []  # opened again: nothing left to do


def test_upgrade_copies_the_database_first_and_reports_what_it_did(tmp_path: Path) -> None:
    home = old_store(tmp_path / "old")
    done = nbdeploy.upgrade(str(home))
    assert (done.before, done.after) == (1, FORMAT) and done.backup is not None
    assert done.backup.parent == home and done.backup.name.startswith("nbdeploy.db.format-1-")
    assert done.backup.stat().st_mode & 0o777 == 0o600
    assert str(done).splitlines()[:2] == [f"upgraded the store at {home} from format 1 to {FORMAT}",
                                          f"  a copy of the database from before is at {done.backup}"]
    assert "highest version number" in str(done)
    copy = sqlite3.connect(done.backup)  # the copy is the store as it was: format 1, every row
    assert copy.execute("PRAGMA user_version").fetchone()[0] == 0
    assert copy.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 3
    copy.close()
    assert user_version(home) == FORMAT and [v.version for v in open_store(home).versions("iris")] == [1, 2, 3]
    assert nbdeploy.upgrade(str(home)).backup is None  # a second upgrade has nothing to do


def test_a_store_from_a_newer_nbdeploy_is_refused_naming_both_formats(tmp_path: Path) -> None:
    Store(tmp_path).register("iris", b"x", {})
    db = sqlite3.connect(tmp_path / "nbdeploy.db")
    db.execute(f"PRAGMA user_version = {FORMAT + 1}")
    db.execute("DROP TABLE runs")  # as if the newer layout had no such table: opening must not bring it back
    db.close()
    message = (rf"has format {FORMAT + 1}, made by a newer nbdeploy; this nbdeploy \S+ reads formats up to "
               rf"{FORMAT}: upgrade nbdeploy")
    for opening in (lambda: Store(tmp_path), lambda: nbdeploy.models(home=str(tmp_path)),
                    lambda: nbdeploy.upgrade(str(tmp_path))):
        with pytest.raises(StoreFormatError, match=message):
            opening()
    db = sqlite3.connect(tmp_path / "nbdeploy.db")
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'runs'").fetchone() is None
    assert db.execute("PRAGMA user_version").fetchone()[0] == FORMAT + 1
    db.close()
    assert [p.name for p in tmp_path.iterdir() if ".bak" in p.name] == []


def test_a_step_that_rewrites_data_waits_for_the_upgrade_command(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    Store(tmp_path).register("iris", b"x", {})

    def rewrite(db: sqlite3.Connection) -> None:
        db.execute("UPDATE versions SET status = 'rewritten'")

    monkeypatch.setattr(store_format, "FORMAT", FORMAT + 1)
    monkeypatch.setattr(store_format, "MIGRATIONS",
                        (*store_format.MIGRATIONS, Migration(FORMAT + 1, "rewrote every version", False, rewrite)))
    with pytest.raises(StoreFormatError, match=rf"has format {FORMAT} and this nbdeploy needs format {FORMAT + 1}.*"
                                               rf"run `nbdeploy upgrade --home {tmp_path}`"):
        Store(tmp_path)
    assert user_version(tmp_path) == FORMAT
    done = nbdeploy.upgrade(str(tmp_path))
    assert done.steps == ("rewrote every version",) and done.after == FORMAT + 1
    assert user_version(tmp_path) == FORMAT + 1 and Store(tmp_path).versions("iris")[0].status == "rewritten"


def test_upgrading_where_there_is_no_store_makes_none(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no nbdeploy store at"):
        nbdeploy.upgrade(str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


def _pg_format(url: str) -> int:
    from nbdeploy.store.postgres import Session

    return int(Session(url, "tests").execute("SELECT MAX(version) FROM nbdeploy_format").fetchone()[0])


def test_a_postgresql_store_records_its_format_and_migrates_through_the_same_steps(
        postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "local"))
    Store(postgres_url).register("iris", b"x", {})
    assert _pg_format(postgres_url) == FORMAT
    assert str(nbdeploy.upgrade(postgres_url)).endswith("nothing to upgrade")

    def rewrite(db) -> None:
        db.execute("UPDATE versions SET status = 'rewritten'")

    monkeypatch.setattr(store_format, "FORMAT", FORMAT + 1)
    monkeypatch.setattr(store_format, "MIGRATIONS",
                        (*store_format.MIGRATIONS, Migration(FORMAT + 1, "rewrote every version", False, rewrite)))
    with pytest.raises(StoreFormatError, match=rf"has format {FORMAT} and this nbdeploy needs format {FORMAT + 1}"):
        Store(postgres_url)
    done = nbdeploy.upgrade(postgres_url)
    assert done.steps == ("rewrote every version",) and done.backup is None
    assert _pg_format(postgres_url) == FORMAT + 1 and Store(postgres_url).versions("iris")[0].status == "rewritten"
    monkeypatch.setattr(store_format, "FORMAT", FORMAT)  # this nbdeploy again: the store is too new for it
    with pytest.raises(StoreFormatError, match=rf"has format {FORMAT + 1}, made by a newer nbdeploy"):
        Store(postgres_url)


def test_upgrading_a_database_without_a_store_makes_none(postgres_url: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "local"))
    with pytest.raises(NotFound, match="no nbdeploy store in postgresql://"):
        nbdeploy.upgrade(postgres_url)
    with pytest.raises(NotFound, match="no nbdeploy store in postgresql://"):
        open_store(postgres_url)
