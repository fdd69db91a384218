import hashlib
import json

import pytest

from nbdeploy.errors import InvalidInput, NotFound
from nbdeploy.store import PRODUCTION, Store


def test_versions_count_up_per_name_and_files_match_their_hash(tmp_path):
    store = Store(tmp_path)
    assert store.register("iris", b"one", {"task": "classification"}) == 1
    assert store.register("iris", b"two", {"task": "classification"}) == 2
    assert store.register("wine", b"three", {}) == 1
    record = store.version("iris", 2)
    assert record.onnx_path.read_bytes() == b"two"
    assert record.sha256 == hashlib.sha256(b"two").hexdigest()
    meta = json.loads((record.path / "model.json").read_text())
    assert meta["version"] == 2 and meta["sha256"] == record.sha256 and meta["task"] == "classification"
    assert [v.version for v in store.versions("iris")] == [1, 2]


def test_a_second_store_object_sees_the_same_state(tmp_path):
    Store(tmp_path).register("iris", b"x", {})
    other = Store(tmp_path)
    assert other.model_names() == ["iris"]
    assert (tmp_path / "nbdeploy.db").exists()


def test_failed_registration_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path)
    store.register("iris", b"ok", {})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.register("iris", b"bad", {"x": Unserialisable()})
    assert [v.version for v in store.versions("iris")] == [1]
    assert sorted(p.name for p in (tmp_path / "models" / "iris").iterdir()) == ["1"]
    assert store.register("iris", b"next", {}) == 2


def test_aliases_move_and_remember_their_history(tmp_path):
    store = Store(tmp_path)
    for body in (b"a", b"b"):
        store.register("iris", body, {})
    before = store.generation()
    assert store.set_alias("iris", PRODUCTION, 1) is None
    assert store.set_alias("iris", PRODUCTION, 2) == 1
    assert store.aliases("iris") == {PRODUCTION: 2}
    assert store.alias_history("iris") == [1, 2]
    assert store.generation() > before


@pytest.mark.parametrize("name", ["", "a b", "../etc", "x" * 65, "-lead"])
def test_bad_model_names_are_refused(tmp_path, name):
    with pytest.raises(InvalidInput, match="model name"):
        Store(tmp_path).register(name, b"x", {})


def test_unknown_versions_and_names_say_what_exists(tmp_path):
    store = Store(tmp_path)
    store.register("iris", b"x", {})
    with pytest.raises(NotFound, match="versions: 1"):
        store.version("iris", 7)
    with pytest.raises(NotFound, match="did you mean 'iris'"):
        store.require_model("irsi")
    with pytest.raises(NotFound):
        store.set_alias("iris", PRODUCTION, 3)
