import hashlib
import json
import os
import socket
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest

from nbdeploy.errors import InvalidInput, NotFound, Unavailable
from nbdeploy.store import PRODUCTION, IntegrityError, Store, default_home, open_store, process_start


def test_versions_count_up_per_name_and_files_match_their_hash(store_home):
    store = Store(store_home)
    assert store.register("iris", b"one", {"task": "classification"}) == 1
    assert store.register("iris", b"two", {"task": "classification"}) == 2
    assert store.register("wine", b"three", {}) == 1
    record = store.version("iris", 2)
    assert record.onnx_path.read_bytes() == b"two"
    assert record.sha256 == hashlib.sha256(b"two").hexdigest()
    meta = json.loads((record.materialise() / "model.json").read_text())
    assert meta["version"] == 2 and meta["sha256"] == record.sha256 and meta["task"] == "classification"
    assert [v.version for v in store.versions("iris")] == [1, 2]


def test_a_second_store_object_sees_the_same_state(store_home):
    Store(store_home).register("iris", b"x", {})
    other = Store(store_home)
    assert other.model_names() == ["iris"]
    assert other.version("iris", 1).onnx_bytes() == b"x"


def test_failed_registration_leaves_nothing_behind(store_home):
    store = Store(store_home)
    store.register("iris", b"ok", {})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.register("iris", b"bad", {"x": Unserialisable()})
    assert [v.version for v in store.versions("iris")] == [1]
    assert sorted(p.name for p in (store.home / "models" / "iris").iterdir()) == ["1"]
    assert store.register("iris", b"next", {}) == 2


def test_aliases_move_and_remember_their_history(store_home):
    store = Store(store_home)
    for body in (b"a", b"b"):
        store.register("iris", body, {})
    before = store.generation()
    assert store.set_alias("iris", PRODUCTION, 1) is None
    assert store.set_alias("iris", PRODUCTION, 2) == 1
    assert store.aliases("iris") == {PRODUCTION: 2}
    assert store.previous_version("iris") == 1
    assert store.generation() > before


@pytest.mark.parametrize("name", ["", "a b", "../etc", "x" * 65, "-lead"])
def test_bad_model_names_are_refused(tmp_path, name):
    with pytest.raises(InvalidInput, match="model name"):
        Store(tmp_path).register(name, b"x", {})


def test_unknown_versions_and_names_say_what_exists(store_home):
    store = Store(store_home)
    store.register("iris", b"x", {})
    with pytest.raises(NotFound, match="versions: 1"):
        store.version("iris", 7)
    with pytest.raises(NotFound, match="did you mean 'iris'"):
        store.require_model("irsi")
    with pytest.raises(NotFound):
        store.set_alias("iris", PRODUCTION, 3)


@pytest.fixture
def two_versions(store_home) -> Store:
    store = Store(store_home)
    for body in (b"a", b"b"):
        store.register("iris", body, {})
    store.set_alias("iris", PRODUCTION, 2)
    store.set_alias("iris", "staging", 1)
    return store


@pytest.mark.parametrize(("ref", "version"), [
    (None, 2), ("production", 2), ("staging", 1), (1, 1), ("1", 1), ("02", 2), (np.int64(1), 1),
])
def test_resolve_reads_a_number_as_a_version_and_anything_else_as_an_alias(two_versions, ref, version):
    assert two_versions.resolve("iris", ref).version == version


@pytest.mark.parametrize(("name", "ref", "error", "message"), [
    ("irsi", None, NotFound, "no model named 'irsi' (did you mean 'iris'?)"),
    ("iris", 7, NotFound, "model 'iris' has no version 7; versions: 1, 2; aliases: production -> 2, staging -> 1"),
    ("iris", "stagin", NotFound, "model 'iris' has no 'stagin' alias (did you mean 'staging'?); versions: 1, 2"),
    ("iris", "\u00b2", NotFound, "has no '\u00b2' alias"),  # a digit, but not an ASCII one
    ("iris", True, InvalidInput, "a version is a number or an alias name, got True"),
    ("iris", 1.0, InvalidInput, "got 1.0"),
])
def test_resolve_errors_list_what_exists(two_versions, name, ref, error, message):
    with pytest.raises(error) as exc:
        two_versions.resolve(name, ref)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_no_production_alias_lists_the_versions(store_home):
    store = Store(store_home)
    store.register("iris", b"a", {})
    with pytest.raises(NotFound, match="has no 'production' alias; versions: 1; aliases: none"):
        store.resolve("iris")


def test_default_home_is_the_environment_else_dot_nbdeploy(monkeypatch, tmp_path):
    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "configured"))
    assert default_home() == tmp_path / "configured"
    assert Store().home == tmp_path / "configured"
    monkeypatch.delenv("NBDEPLOY_HOME")
    monkeypatch.chdir(tmp_path)
    assert default_home() == tmp_path / ".nbdeploy"


def test_open_store_never_creates_one(tmp_path):
    with pytest.raises(NotFound, match="no nbdeploy store at"):
        open_store(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    Store(tmp_path / "made")
    assert open_store(tmp_path / "made").home == tmp_path / "made"


@pytest.mark.parametrize("home", ["s3://bucket/models", "mysql://user:secret@db/models"])
def test_a_url_is_refused_not_made_into_a_directory(monkeypatch, tmp_path, home):
    monkeypatch.chdir(tmp_path)
    for attempt in (lambda: Store(home), lambda: open_store(home)):
        with pytest.raises(InvalidInput, match=r"is a [a-z0-9]+:// URL") as exc:
            attempt()
        assert "secret" not in str(exc.value)
    monkeypatch.setenv("NBDEPLOY_HOME", home)
    with pytest.raises(InvalidInput, match="NBDEPLOY_HOME is a"):
        Store()
    assert list(Path(tmp_path).iterdir()) == []


def test_a_postgresql_store_out_of_reach_is_named_without_its_password(monkeypatch, tmp_path):
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "local"))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for attempt in (lambda: Store(f"postgresql://user:secret@127.0.0.1:{port}/models"),
                    lambda: open_store(f"postgresql://user:secret@127.0.0.1:{port}/models")):
        with pytest.raises(Unavailable, match=rf"cannot connect to postgresql://user:\*\*\*@127.0.0.1:{port}/models"
                           ) as exc:
            attempt()
        assert "secret" not in str(exc.value)


@pytest.mark.parametrize("name", ["iris\n", "iris\r\n", "\niris", "ir is", "iris/../x", "", "-iris", "x" * 65, "ıris"])
def test_model_names_are_matched_whole(tmp_path, name):
    store = Store(tmp_path)
    with pytest.raises(InvalidInput, match="is not valid"):
        store.register(name, b"a", {})
    assert store.model_names() == [] and list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize("alias", ["staging\n", "staging\r\n", "st aging", "1st", ""])
def test_aliases_are_matched_whole(two_versions, alias):
    with pytest.raises(InvalidInput, match="is not valid"):
        two_versions.set_alias("iris", alias, 1)
    assert set(two_versions.aliases("iris")) == {PRODUCTION, "staging"}


@pytest.mark.parametrize("ref", ["1\n", " 1", "1_0", "\u0661", "+1", "1.0"])
def test_a_version_number_is_ascii_digits_only(two_versions, ref):
    with pytest.raises(InvalidInput, match="a version number is an integer or a string of ASCII digits"):
        two_versions.version("iris", ref)
    with pytest.raises(NotFound, match="alias"):  # resolve reads anything else as an alias name
        two_versions.resolve("iris", ref)
    assert two_versions.version("iris", "1").version == 1


def test_extra_files_are_read_back_only_as_registered(store_home):
    store = Store(store_home)
    version = store.register("iris", b"onnx", {}, files={"holdout.json": b'{"y": [1]}'})
    record = store.version("iris", version)
    assert record.meta["files"] == {"holdout.json": hashlib.sha256(b'{"y": [1]}').hexdigest()}
    assert record.file_bytes("holdout.json") == b'{"y": [1]}'
    assert record.file_bytes("train.json") is None  # none was stored
    (record.path / "holdout.json").write_bytes(b'{"y": [0]}')
    with pytest.raises(IntegrityError, match=r"holdout\.json does not match its recorded sha256"):
        record.file_bytes("holdout.json")
    (record.path / "train.json").write_bytes(b'{"y": [0]}')  # added afterwards: never registered
    with pytest.raises(IntegrityError, match="has no sha256 recorded in the registry"):
        record.file_bytes("train.json")
    (record.path / "holdout.json").unlink()
    if store.where.is_postgres:  # the database holds the file: a missing copy on this machine is fetched again
        assert record.file_bytes("holdout.json") == b'{"y": [1]}'
        return
    with pytest.raises(IntegrityError, match="is missing"):
        record.file_bytes("holdout.json")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_is_owner_only_whatever_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        store = Store(tmp_path / "home")
        store.register("iris", b"onnx", {}, files={"holdout.json": b"{}"})
        store.set_alias("iris", PRODUCTION, 1)  # a write: the WAL and its index exist now
        reader = sqlite3.connect(store.db_path)  # another connection keeps the -wal and -shm files in place
        try:
            reader.execute("SELECT COUNT(*) FROM versions").fetchone()
            home = store.home
            assert {"nbdeploy.db-wal", "nbdeploy.db-shm"} <= {p.name for p in home.iterdir()}
            dirs = [home, *(p for p in home.rglob("*") if p.is_dir())]
            files = [p for p in home.rglob("*") if p.is_file()]
            assert {p.name for p in files} >= {"nbdeploy.db", "model.onnx", "model.json", "holdout.json"}
            assert {str(p): oct(_mode(p)) for p in dirs if _mode(p) != 0o700} == {}
            assert {str(p): oct(_mode(p)) for p in files if _mode(p) != 0o600} == {}
        finally:
            reader.close()
    finally:
        os.umask(previous)


def test_an_existing_store_is_made_owner_only_when_opened(tmp_path):
    home = tmp_path / "home"
    Store(home).register("iris", b"onnx", {})
    home.chmod(0o755)
    (home / "nbdeploy.db").chmod(0o644)
    Store(home)
    assert _mode(home) == 0o700 and _mode(home / "nbdeploy.db") == 0o600


def test_a_store_made_before_server_start_times_were_recorded_opens(tmp_path):
    db = sqlite3.connect(tmp_path / "nbdeploy.db")
    db.execute("CREATE TABLE server (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, host TEXT NOT NULL, "
               "port INTEGER NOT NULL, started_at REAL NOT NULL, applied INTEGER NOT NULL DEFAULT -1)")
    db.execute("INSERT INTO server VALUES (1, 4242, '127.0.0.1', 9, 0, -1)")
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert store.server().pid == 4242 and store.server().proc_start is None
    store.set_server(os.getpid(), "127.0.0.1", 9)
    assert store.server().proc_start == process_start(os.getpid()) is not None


def test_concurrent_registrations_get_distinct_versions(store_home):
    """Several kernels deploying at once (processes, each its own connection) into a store none of them
    has made yet: it is made once, and no number is given twice."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=ctx) as pool:
        numbers = list(pool.map(_register, [store_home] * 12))
    assert sorted(numbers) == list(range(1, 13))
    assert [v.version for v in Store(store_home).versions("iris")] == list(range(1, 13))


def _register(home: str) -> int:
    return Store(home).register("iris", os.urandom(8), {})

