"""The store's canary rows: one running per model, the ``canary`` alias with it, one recorded outcome."""

from __future__ import annotations

import threading

import pytest

from nbdeploy.errors import Conflict, InvalidInput
from nbdeploy.store import PRODUCTION, Store
from nbdeploy.store.canary import (
    ABORTED,
    PROMOTED,
    canaries,
    current_canary,
    end_canary,
    latest_canary,
    running_canaries,
    start_canary,
)


def _store(home: str) -> Store:
    store = Store(home)
    for _ in range(3):
        store.register("iris", b"onnx", {"task": "classification"})
    store.set_alias("iris", PRODUCTION, 1)
    store.set_serving("iris", True)
    return store


@pytest.fixture
def store(store_home: str) -> Store:
    return _store(store_home)


@pytest.fixture
def sqlite_store(tmp_path) -> Store:
    """For the checks of a canary's arguments, made before anything is written: one backend is enough."""
    return _store(str(tmp_path / "store"))


def test_a_canary_is_a_row_and_an_alias_until_it_ends(store):
    generation = store.generation()
    gate = {"passed": True, "reason": "challenger accuracy 0.97 >= champion 0.96"}
    started = start_canary(store, "iris", 2, 10.0, key="X-User", promote_after=100, guards={"min_requests": 5},
                           gate=gate)
    assert store.generation() > generation  # the servers follow
    assert store.aliases("iris") == {PRODUCTION: 1, "canary": 2}
    assert current_canary(store, "iris") == started == latest_canary(store, "iris")
    assert (started.production, started.key, started.gate, started.promotable) == (1, "X-User", gate, True)
    assert running_canaries(store) == [started]
    ended = end_canary(store, "iris", ABORTED, "error rate 20%")
    assert (ended.state, ended.reason) == (ABORTED, "error rate 20%") and ended.ended_at >= started.started_at
    assert store.aliases("iris") == {PRODUCTION: 1}
    assert end_canary(store, "iris", ABORTED, "again") is None  # one outcome
    assert current_canary(store, "iris") is None and latest_canary(store, "iris") == ended
    assert running_canaries(store) == []


def test_promotion_moves_production_in_the_alias_history(store):
    store.set_status("iris", 2, "refused")  # refused at its deploy; the gate passed when the canary started
    start_canary(store, "iris", 2, 50.0)
    end_canary(store, "iris", PROMOTED, "passed its guards")
    assert store.aliases("iris") == {PRODUCTION: 2}
    assert store.version("iris", 2).status == "registered"
    assert store.previous_version("iris") == 1  # a rollback undoes it


def test_several_judges_record_one_outcome(store):
    start_canary(store, "iris", 2, 50.0)
    outcomes: list = []
    threads = [threading.Thread(target=lambda: outcomes.append(end_canary(Store(store.location), "iris", ABORTED, "x")))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(o is not None for o in outcomes) == 1
    assert [c.state for c in canaries(store, "iris")] == [ABORTED]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"version": 1}, InvalidInput, "production already"),
    ({"percent": 0}, InvalidInput, "between 0 and 100"),
    ({"percent": 100.0}, InvalidInput, "between 0 and 100"),
    ({"percent": True}, InvalidInput, "between 0 and 100"),
    ({"promote_after": 0}, InvalidInput, "positive number"),
    ({"key": "no spaces"}, InvalidInput, "request header"),
])
def test_a_canary_that_cannot_run_is_refused_and_nothing_is_written(sqlite_store, kwargs, error, message):
    store = sqlite_store
    before = (store.aliases("iris"), store.generation())
    args = {"version": 2, "percent": 10.0, **kwargs}
    with pytest.raises(error, match=message):
        start_canary(store, "iris", args.pop("version"), args.pop("percent"), **args)
    assert (store.aliases("iris"), store.generation(), canaries(store)) == (*before, [])


def test_one_canary_per_model_and_only_of_a_served_model(store):
    start_canary(store, "iris", 2, 10.0)
    with pytest.raises(Conflict, match="has a canary running already"):
        start_canary(store, "iris", 3, 10.0)
    end_canary(store, "iris", ABORTED)
    store.set_serving("iris", False)
    with pytest.raises(Conflict, match="is not served"):
        start_canary(store, "iris", 3, 10.0)
    with pytest.raises(InvalidInput, match="ends as one of"):
        end_canary(store, "iris", "finished")


def test_the_canary_alias_moves_only_with_a_canary(store: Store) -> None:
    """A promote or rollback of ``canary`` would move the alias without its record: routing and guards disagree."""
    with pytest.raises(InvalidInput, match=r"the canary alias belongs to canary rollouts: start one with "
                                           r"nbdeploy.canary\('iris', VERSION\) \(%deploy canary iris VERSION\)"):
        store.set_alias("iris", "canary", 2)
    assert "canary" not in store.aliases("iris")
    start_canary(store, "iris", 2, 10.0)
    assert store.aliases("iris")["canary"] == 2
