"""Deleting versions, aliases and models, and pruning: what goes from nbdeploy.db, the model files and the
prediction log, what stays, and what is refused. On both backends (SQLite files, a PostgreSQL database) with
the real log writer; the tests that need a running server are in tests/test_managing.py."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from logtables import log_db

import nbdeploy
from nbdeploy.errors import Conflict, InvalidInput, NotFound, UnknownName
from nbdeploy.monitor import reference_profile
from nbdeploy.store import PRODUCTION, Store, database, postgres, removal
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog

LOG_TABLES = ("predictions", "feedback", "rollup", "feature_rollup", "columns")


def event(key: str, model: str, version: int) -> PredictionEvent:
    return PredictionEvent(id=key, ts=time.time(), model=model, version=version,
                           inputs={"a": np.array([1.0]), "b": np.array([2.0])},
                           outputs={"label": np.array([1]), "probabilities": np.array([[0.2, 0.8]], np.float32)},
                           latency_ms=1.0, status=200, error=None)


def make_store(home: str, versions: dict[str, int], traffic: dict[tuple[str, int], int]) -> Store:
    """``versions[name]`` versions per model; ``traffic[(model, version)]`` logged predictions each, half of
    them labelled (``model`` may be ``<name>@shadow``: shadow answers)."""
    store = Store(home)
    for name, n in versions.items():
        for i in range(n):
            store.register(name, f"{name}-{i}".encode(), {"task": "classification"}, files={"holdout.json": b"[]"})
    profile = reference_profile(pd.DataFrame({"a": [0.0, 1.0], "b": [0.0, 3.0]}))
    log = PredictionLog(home, profiles=lambda m, v: profile, start=False)
    try:
        log.write([event(f"{m}-{v}-{i}", m, v) for (m, v), n in traffic.items() for i in range(n)])
        for (m, v), n in traffic.items():
            if "@" not in m:
                log.feedback(m, [{"id": f"{m}-{v}-{i}", "label": 1} for i in range(0, n, 2)])
    finally:
        log.close()
    return store


def log_counts(home: str) -> dict[tuple[str, str, int], int]:
    """(table, model, version) -> rows in the prediction log."""
    db = log_db(home)
    try:
        return {(t, m, v): n for t in LOG_TABLES
                for m, v, n in db.execute(f"SELECT model, version, COUNT(*) FROM {t} GROUP BY model, version")}
    finally:
        db.close()


def folders(store: Store, name: str) -> list[str]:
    path = store.home / "models" / name
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_deleting_a_version_removes_its_files_and_logged_rows_and_leaves_the_others(store_home: str) -> None:
    store = make_store(store_home, {"iris": 3, "wine": 1},
                       {("iris", 1): 6, ("iris", 2): 4, ("iris", 3): 2, ("iris@shadow", 1): 2, ("wine", 1): 3})
    store.set_alias("iris", PRODUCTION, 3)
    before = log_counts(store_home)
    assert before[("feature_rollup", "iris", 1)] > 0 and before[("feedback", "iris", 1)] == 3
    generation = store.generation()

    removed = nbdeploy.delete("iris", 1, home=store_home)

    assert str(removed) == "removed 'iris' version 1 and 8 logged predictions"  # its own 6 and 2 shadow answers
    assert [v.version for v in store.versions("iris")] == [2, 3] and folders(store, "iris") == ["2", "3"]
    assert folders(store, "wine") == ["1"] and store.aliases("iris") == {PRODUCTION: 3}
    assert log_counts(store_home) == {k: n for k, n in before.items() if k[1:] not in (("iris", 1), ("iris@shadow", 1))}
    assert store.generation() > generation  # a running server follows the store
    assert store.version("iris", 2).file_bytes("holdout.json") == b"[]"  # the others read back as stored


def test_what_an_alias_points_at_is_refused_naming_the_alias_and_nothing_is_lost(store_home: str) -> None:
    store = make_store(store_home, {"iris": 3}, {("iris", 2): 4, ("iris", 3): 2})
    store.set_alias("iris", PRODUCTION, 3)
    store.set_alias("iris", "staging", 2)
    before = log_counts(store_home)
    home = store_home

    with pytest.raises(Conflict, match=r"version 2 of 'iris' is what its staging alias points at \(staging -> 2\): "
                                       r"move the alias first \(%deploy promote iris VERSION --alias staging\), or "
                                       r"pass force=True \(--force\)"):
        nbdeploy.delete("iris", 2, home=home)
    with pytest.raises(Conflict, match=r"its production alias .* removing production stops serving 'iris'"):
        nbdeploy.delete("iris", "3", home=home)
    with pytest.raises(Conflict, match=r"model 'iris' has aliases \(production -> 3, staging -> 2\)"):
        nbdeploy.delete("iris", home=home)
    with pytest.raises(Conflict, match="'production' is what /v2/models/iris serves"):
        nbdeploy.delete("iris", alias=PRODUCTION, home=home)
    assert [v.version for v in store.versions("iris")] == [1, 2, 3] and folders(store, "iris") == ["1", "2", "3"]
    assert store.aliases("iris") == {PRODUCTION: 3, "staging": 2} and log_counts(store_home) == before

    removed = nbdeploy.delete("iris", 2, force=True, home=home)
    assert str(removed) == "removed 'iris' version 2, its alias staging and 4 logged predictions"
    assert store.aliases("iris") == {PRODUCTION: 3} and folders(store, "iris") == ["1", "3"]


def test_mistakes_get_clear_errors(store_home: str, tmp_path: Path) -> None:
    store = make_store(store_home, {"iris": 2}, {})
    store.set_alias("iris", "staging", 2)
    home = store_home
    with pytest.raises(UnknownName, match=r"no model named 'irsi' \(did you mean 'iris'\?\)"):
        nbdeploy.delete("irsi", 1, home=home)
    with pytest.raises(NotFound, match="model 'iris' has no version 7; versions: 1, 2; aliases: staging -> 2"):
        nbdeploy.delete("iris", 7, home=home)
    with pytest.raises(InvalidInput, match=r"a version to delete is a number, got 'staging'; to remove the alias "
                                           r"'staging' pass alias='staging' \(--alias staging\)"):
        nbdeploy.delete("iris", "staging", home=home)
    with pytest.raises(NotFound, match=r"no 'stagign' alias \(did you mean 'staging'\?\)"):
        nbdeploy.delete("iris", alias="stagign", home=home)
    with pytest.raises(InvalidInput, match="a version or an alias to delete, not both"):
        nbdeploy.delete("iris", 2, alias="staging", home=home)
    with pytest.raises(NotFound, match="no nbdeploy store at"):
        nbdeploy.delete("iris", 1, home=str(tmp_path / "elsewhere"))
    assert not (tmp_path / "elsewhere").exists()
    assert [v.version for v in store.versions("iris")] == [1, 2]


def test_deleting_an_alias_keeps_its_version(store_home: str) -> None:
    store = make_store(store_home, {"iris": 2}, {("iris", 2): 2})
    store.set_alias("iris", "staging", 2)
    removed = nbdeploy.delete("iris", alias="staging", home=store_home)
    assert str(removed) == "removed the staging alias of 'iris'"
    assert store.aliases("iris") == {} and [v.version for v in store.versions("iris")] == [1, 2]
    assert log_counts(store_home)[("predictions", "iris", 2)] == 2


def test_version_numbers_are_never_given_again(store_home: str) -> None:
    store = make_store(store_home, {"iris": 3}, {})
    nbdeploy.delete("iris", 3, home=store_home)
    assert store.register("iris", b"next", {}) == 4
    nbdeploy.delete("iris", home=store_home)  # the whole model: nothing aliased, so no force needed
    assert store.model_names() == [] and not (store.home / "models" / "iris").exists()
    assert store.register("iris", b"again", {}) == 5  # a number names one model only, in logs and exports


def test_deleting_a_whole_model_removes_every_row_of_its_name(store_home: str) -> None:
    store = make_store(store_home, {"iris": 2, "wine": 2}, {("iris", 1): 2, ("iris", 2): 3, ("wine", 2): 2})
    store.set_alias("iris", PRODUCTION, 2)
    store.set_serving("iris", True)
    store.add_run("iris", {"score": 0.9})
    store.add_run("wine", {"score": 0.8})
    wine_log = {k: n for k, n in log_counts(store_home).items() if k[1] == "wine"}

    removed = nbdeploy.delete("iris", force=True, home=store_home)

    assert str(removed) == ("removed model 'iris' (versions 1, 2), its alias production and 5 logged predictions; "
                            "it is no longer served")
    assert store.model_names() == ["wine"] and store.serving_models() == [] and store.aliases("iris") == {}
    assert [r["name"] for r in store.runs()] == ["wine"] and folders(store, "wine") == ["1", "2"]
    for db, table in named_tables(store):  # tables added later are covered too: any table with a name column
        assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE name = 'iris'").fetchone()[0] == 0, table
    assert log_counts(store_home) == wine_log


def named_tables(store: Store) -> list[tuple[object, str]]:
    """(connection, table) of every registry table with a ``name`` column: nbdeploy.db's, or a PostgreSQL
    store's database and this machine's runtime.db."""
    runtime = sqlite3.connect(store.db_path)
    found = [(runtime, t) for (t,) in runtime.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
             if "name" in {r[1] for r in runtime.execute(f"PRAGMA table_info({t})")}]
    where = database.locate(store.location)
    if where.url is not None:
        db = postgres.Session(where.url, "tests")
        found += [(db, t) for t in postgres.tables(db) if "name" in postgres.table_columns(db, t)]
    return found


def test_deleting_a_version_on_postgresql_removes_its_files_rows(postgres_url: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "local"))
    store = make_store(postgres_url, {"iris": 2}, {("iris", 1): 2})
    db = postgres.Session(postgres_url, "tests")
    files = "SELECT version, COUNT(*) FROM files WHERE name = 'iris' GROUP BY version ORDER BY version"
    assert [tuple(r) for r in db.execute(files)] == [(1, 3), (2, 3)]  # model.onnx, model.json, holdout.json
    removed = nbdeploy.delete("iris", 1, home=postgres_url)
    assert str(removed) == "removed 'iris' version 1 and 2 logged predictions"
    assert [tuple(r) for r in db.execute(files)] == [(2, 3)]
    assert store.version("iris", 2).file_bytes("holdout.json") == b"[]"
    nbdeploy.delete("iris", home=postgres_url)
    assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0 and log_counts(postgres_url) == {}


def test_prune_keeps_the_newest_and_every_aliased_version(store_home: str) -> None:
    store = make_store(store_home, {"iris": 6, "wine": 2}, {("iris", v): 1 for v in range(1, 7)})
    store.set_alias("iris", PRODUCTION, 6)
    store.set_alias("iris", "staging", 1)
    home = store_home

    planned = nbdeploy.prune(keep=2, dry_run=True, home=home)
    assert [str(p) for p in planned] == ["would remove 'iris' versions 2, 3, 4 and 3 logged predictions"]
    assert folders(store, "iris") == ["1", "2", "3", "4", "5", "6"]  # a dry run removes nothing

    removed = nbdeploy.prune(keep=2, home=home)
    assert [str(r) for r in removed] == ["removed 'iris' versions 2, 3, 4 and 3 logged predictions"]
    assert [v.version for v in store.versions("iris")] == [1, 5, 6] and folders(store, "iris") == ["1", "5", "6"]
    assert [v.version for v in store.versions("wine")] == [1, 2]
    assert {v for (t, m, v) in log_counts(store_home) if t == "predictions"} == {1, 5, 6}

    assert [str(r) for r in nbdeploy.prune("iris", keep=0, home=home)] == [
        "removed 'iris' version 5 and 1 logged prediction"]
    assert nbdeploy.prune("iris", keep=0, home=home) == []
    with pytest.raises(InvalidInput, match="keep is how many of the newest versions"):
        nbdeploy.prune(keep=-1, home=home)
    with pytest.raises(UnknownName, match=r"did you mean 'iris'"):
        nbdeploy.prune("irsi", keep=1, home=home)


def test_a_rollback_returns_to_a_version_that_still_exists(store_home: str) -> None:
    store = make_store(store_home, {"iris": 4}, {})
    for version in (1, 2, 3, 4):
        store.set_alias("iris", PRODUCTION, version)
    home = store_home
    nbdeploy.delete("iris", 3, home=home)
    nbdeploy.rollback("iris", home=home)
    assert store.aliases("iris") == {PRODUCTION: 2}  # 3 is gone: the step back skips it
    nbdeploy.delete("iris", 2, force=True, home=home)
    assert store.aliases("iris") == {}
    nbdeploy.rollback("iris", home=home)  # no production left: back to the one before it (4 was rolled back)
    assert store.aliases("iris") == {PRODUCTION: 1}


def test_an_alias_moved_onto_a_planned_version_stops_the_deletion(store_home: str) -> None:
    store = make_store(store_home, {"iris": 2}, {("iris", 1): 2})
    plan = removal.plan_delete(store, "iris", 1)
    store.set_alias("iris", "staging", 1)  # another kernel, between the plan and its deletion
    with pytest.raises(Conflict, match=r"the staging alias of 'iris' moved onto a version being deleted "
                                       r"\(staging -> 1\) meanwhile; nothing was deleted"):
        removal.remove(store, plan)
    assert [v.version for v in store.versions("iris")] == [1, 2] and folders(store, "iris") == ["1", "2"]
    assert log_counts(store_home)[("predictions", "iris", 1)] == 2


def test_deleting_a_canarys_version_ends_the_canary(store_home: str) -> None:
    from nbdeploy.store.canary import canaries, current_canary, start_canary

    store = make_store(store_home, {"iris": 2}, {})
    store.set_alias("iris", PRODUCTION, 1)
    store.set_serving("iris", True)
    start_canary(store, "iris", 2, 10.0)
    with pytest.raises(Conflict, match=r"its canary alias points at \(canary -> 2\)"):
        nbdeploy.delete("iris", 2, home=store_home)
    assert current_canary(store, "iris") is not None
    nbdeploy.delete("iris", 2, force=True, home=store_home)
    assert current_canary(store, "iris") is None and store.aliases("iris") == {PRODUCTION: 1}
    ended = canaries(store, "iris")[-1]  # its history stays readable
    assert (ended.state, ended.reason, ended.version) == ("stopped", "version 2 was deleted", 2)


@pytest.mark.parametrize("alias", ["canary", PRODUCTION])
def test_removing_an_alias_of_a_canarys_arm_ends_the_canary(store_home: str, alias: str) -> None:
    """Without its alias the canary has no arm left: it ends (a stopped model's would never be judged)."""
    from nbdeploy.store.canary import canaries, current_canary, start_canary

    store = make_store(store_home, {"iris": 2}, {})
    store.set_alias("iris", PRODUCTION, 1)
    store.set_serving("iris", True)
    start_canary(store, "iris", 2, 10.0)
    removal.remove(store, removal.plan_delete(store, "iris", alias=alias, force=True))
    assert current_canary(store, "iris") is None and "canary" not in store.aliases("iris")
    ended = canaries(store, "iris")[-1]
    assert (ended.state, ended.reason) == ("stopped", f"its {alias} alias was deleted")
