"""store/copying.py: a whole store copied SQLite -> PostgreSQL -> SQLite, verified, refused when it must be."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbdeploy import cli
from nbdeploy.monitor import reference_profile
from nbdeploy.store import Store
from nbdeploy.store import format as store_format
from nbdeploy.store.copying import TABLES, CopyReport, DestinationNotEmpty, copy_store
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog
from nbdeploy.store.postgres import Session, close_pools
from nbdeploy.store.registry import IntegrityError

KEYS = {"incidents": "ts, kind, detail", "predictions": "seq", "feedback": "id", "columns": "model, version",
        "rollup": "model, version, bucket", "feature_rollup": "model, version, bucket, feature"}
NOW = time.time()


def event(i: int, *, model: str, label: object, version: int = 1) -> PredictionEvent:
    inputs = {"a": np.array([float(i)]), "colour": np.array(["red" if i % 2 else "blue"], dtype=object)}
    outputs = {"label": np.array([label], dtype=object if isinstance(label, str) else None),
               "probabilities": np.array([[0.25, 0.75]], np.float32)}
    return PredictionEvent(id=f"{model}-{i}", ts=NOW - 100 + i, model=model, version=version, inputs=inputs,
                           outputs=outputs, latency_ms=1.5 + i, status=200, error=None,
                           client_id=f"c{i}" if i % 3 == 0 else None)


def build(home: Path) -> Store:
    """A SQLite store: two versions of ``m`` with extra files, one of ``s``, aliases moved, runs, and a log
    with predictions labelled by integers (``m``) and by strings (``s``), feedback of both kinds, rollups."""
    store = Store(home)
    store.add_run("m", {"score": 0.9})
    store.add_run("m", {"score": 0.95})
    store.register("m", b"onnx-1", {"task": "classification"}, files={"heldout.parquet": b"rows-1"})
    store.register("m", b"onnx-2", {"task": "classification"}, files={"heldout.parquet": b"rows-2",
                                                                      "estimator.pkl": b"\x00\x01pickle"})
    store.register("s", b"onnx-s", {"task": "classification"})
    store.set_alias("m", "production", 1)
    store.set_alias("m", "production", 2)
    store.set_alias("m", "staging", 1)
    store.set_alias("m", "production", 1, kind="rollback")
    store.set_alias("s", "production", 1)
    store.set_serving("m", True)
    profile = reference_profile(pd.DataFrame({"a": [0.0, 10.0], "colour": ["red", "blue"]}))
    log = PredictionLog(home, profiles=lambda m, v: profile, start=False)
    log.write([event(i, model="m", label=i % 3) for i in range(40)]
              + [event(i, model="s", label=["setosa", "virginica"][i % 2]) for i in range(25)])
    assert log.feedback("m", [{"id": "m-1", "label": 1}, {"id": "m-2", "label": 0}])["accepted"] == 2
    assert log.feedback("s", [{"id": "s-1", "label": "virginica"}, {"id": "s-2", "label": 7}])["accepted"] == 2
    log.close()
    with sqlite3.connect(home / "log.db") as db:
        db.execute("INSERT INTO incidents (ts, kind, detail) VALUES (?, 'recovered', '{}')", (NOW,))
    return store


def dump(home: Path) -> dict[str, list[tuple]]:
    """Every shared table of a SQLite store, in key order."""
    out = {}
    with sqlite3.connect(home / "nbdeploy.db") as reg, sqlite3.connect(home / "log.db") as log:
        for table in TABLES:
            db = log if table in KEYS else reg
            info = db.execute(f"PRAGMA table_info({table})").fetchall()
            key = ", ".join(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])) or KEYS[table]
            out[table] = db.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
    return out


def files(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home / "models")): p.read_bytes()
            for p in sorted((home / "models").rglob("*")) if p.is_file()}


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "local"))
    yield tmp_path / "local"
    close_pools()


def test_a_store_goes_to_postgresql_and_back_unchanged(tmp_path: Path, postgres_url: str, local: Path) -> None:
    src = tmp_path / "src"
    build(src)
    there = copy_store(src, postgres_url)
    assert isinstance(there, CopyReport) and there.ok
    assert there.table("versions").rows == 3 and there.table("predictions").rows == 65
    assert there.table("feedback").rows == 4 and there.table("alias_history").rows == 5
    assert there.table("rollup").rows > 0 and there.table("feature_rollup").rows > 0
    assert there.files == 3 * 2 + 3  # model.onnx and model.json of each version, and three extra files
    assert there.format == store_format.FORMAT
    shown = str(there)
    assert "predictions" in shown and "65" in shown and "ok" in shown and "DIFFERS" not in shown

    # the PostgreSQL store works as a store: its files, aliases, history and labels as in the source
    pg = Store(postgres_url)
    assert pg.version("m", 2).file_bytes("estimator.pkl") == b"\x00\x01pickle"
    assert pg.version("m", 1).onnx_bytes() == b"onnx-1"
    assert pg.aliases("m") == {"production": 1, "staging": 1}
    assert [h["kind"] for h in pg.alias_history("m")] == ["set", "set", "set", "rollback"]
    assert [r["score"] for r in pg.runs("m")] == [0.9, 0.95]
    db = Session(postgres_url, "log")
    labels = [r[0] for r in db.execute("SELECT label FROM feedback ORDER BY id")]
    assert labels == [1, 0, "virginica", 7]
    assert {r[0] for r in db.execute("SELECT label FROM predictions WHERE model = 's'")} == {"setosa", "virginica"}
    # ids go on after the copied ones: history keeps its order
    assert pg.add_run("m", {}) == 3
    pg.set_alias("m", "production", 2)
    assert [h["version"] for h in pg.alias_history("m")][-1] == 2
    assert pg.register("m", b"onnx-3", {}) == 3

    back = tmp_path / "back"
    again = copy_store(postgres_url, back)
    assert again.ok
    for table in again.tables:  # more rows only where the PostgreSQL store was used meanwhile
        if table.name not in ("runs", "alias_history", "aliases", "versions", "state", "models"):
            assert table.checksum == there.table(table.name).checksum, table.name
    before, after = dump(src), dump(back)
    for table in ("predictions", "feedback", "columns", "rollup", "feature_rollup", "incidents"):
        assert after[table] == before[table], table
    assert after["alias_history"][:5] == before["alias_history"]
    assert after["runs"][:2] == before["runs"]
    assert after["versions"][:2] == before["versions"][:2]
    copied = files(back)
    assert {k: v for k, v in copied.items() if not k.startswith("m/3/")} == files(src)
    assert Store(back).version("m", 3).onnx_bytes() == b"onnx-3"
    assert store_format.found(sqlite3.connect(back / "nbdeploy.db")) == store_format.FORMAT


def test_sqlite_to_sqlite_is_an_exact_copy(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src)
    report = copy_store(src, dst)
    assert report.ok and report.rows == sum(len(rows) for rows in dump(src).values())
    assert dump(dst) == dump(src)
    assert files(dst) == files(src)
    with sqlite3.connect(src / "nbdeploy.db") as a, sqlite3.connect(dst / "nbdeploy.db") as b:
        query = "SELECT name, seq FROM sqlite_sequence ORDER BY name"
        assert a.execute(query).fetchall() == b.execute(query).fetchall()


def test_postgresql_to_postgresql(tmp_path: Path, postgres, local: Path) -> None:
    first, second = postgres.fresh_database(), postgres.fresh_database()
    build(tmp_path / "src")
    a = copy_store(tmp_path / "src", first)
    b = copy_store(first, second)
    assert [(t.name, t.rows, t.checksum) for t in a.tables] == [(t.name, t.rows, t.checksum) for t in b.tables]
    assert Store(second).version("m", 2).file_bytes("heldout.parquet") == b"rows-2"


def test_a_destination_with_data_is_refused_and_left_as_it_was(tmp_path: Path, postgres_url: str,
                                                               local: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build(src)
    other = Store(dst)
    other.register("x", b"other", {})
    with sqlite3.connect(dst / "nbdeploy.db") as db:
        before = db.execute("SELECT * FROM versions").fetchall(), db.execute("SELECT * FROM state").fetchall()
    before_files = files(dst)
    with pytest.raises(DestinationNotEmpty, match=r"not empty.*versions: 1"):
        copy_store(src, dst)
    with sqlite3.connect(dst / "nbdeploy.db") as db:
        after = db.execute("SELECT * FROM versions").fetchall(), db.execute("SELECT * FROM state").fetchall()
    assert after == before and files(dst) == before_files and not (dst / "log.db").exists()
    assert [v.version for v in Store(dst).versions("x")] == [1] and Store(dst).model_names() == ["x"]

    copy_store(src, postgres_url)
    with pytest.raises(DestinationNotEmpty, match="predictions: 65"):
        copy_store(src, postgres_url)
    assert Session(postgres_url, "registry").execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 3

    with pytest.raises(Exception, match="same store"):
        copy_store(src, src)


def test_a_changed_file_in_the_source_is_refused_and_nothing_is_kept(tmp_path: Path, postgres_url: str,
                                                                     local: Path) -> None:
    src = tmp_path / "src"
    build(src)
    (src / "models" / "m" / "2" / "estimator.pkl").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match=r"estimator\.pkl of 'm' version 2 does not match"):
        copy_store(src, postgres_url)
    db = Session(postgres_url, "registry")
    for table in ("versions", "files", "predictions", "alias_history"):
        assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    with pytest.raises(IntegrityError):
        copy_store(src, tmp_path / "dst")
    assert Store(tmp_path / "dst").model_names() == [] and files(tmp_path / "dst") == {}

    (src / "models" / "m" / "2" / "estimator.pkl").write_bytes(b"\x00\x01pickle")  # put back: the copy goes through
    assert copy_store(src, postgres_url).ok


def test_the_command_prints_the_report_or_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    build(src)
    assert cli.main(["store", "copy", str(src), str(tmp_path / "dst")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"copied {src} -> {tmp_path / 'dst'}") and "predictions" in out
    assert cli.main(["store", "copy", str(src), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbdeploy: the destination store") and err.count("\n") == 1


def test_a_password_is_never_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path / "src")
    code = cli.main(["store", "copy", str(tmp_path / "src"), "postgresql://u:s3cret@127.0.0.1:1/none"])
    err = capsys.readouterr().err
    assert code == 2 and "s3cret" not in err and "***" in err
