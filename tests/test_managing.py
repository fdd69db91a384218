"""Managing what is deployed: one view of the store, serving again after a stop, large predictions,
a server that wants its token, and the management commands where scikit-learn is not installed."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

import nbdeploy
from nbdeploy.client import v2_inputs
from nbdeploy.errors import Conflict, NotFound
from nbdeploy.store import PRODUCTION, Store

pytestmark = pytest.mark.server


def test_one_view_stop_and_serve_again(tmp_path: Path, iris) -> None:
    X, _, model = iris
    home = str(tmp_path / "store")
    with pytest.raises(NotFound, match="no nbdeploy store at"):
        nbdeploy.models(home=home)  # a missing store is an error, and none is made
    assert not Path(home).exists()
    dep = nbdeploy.deploy(model, X, name="iris", home=home)
    try:
        row = nbdeploy.models(home=home)["iris"]
        assert row["status"] == "ready" and row["states"] == {1: "serving"} and row["url"] == dep.url
        dep.stop()
        row = nbdeploy.models(home=home)["iris"]
        assert row["status"] == "stopped" and row["states"] == {1: "stopped"} and row["url"] is None
        with pytest.raises(nbdeploy.NbdeployError, match=r"serve it again with nbdeploy.get\('iris'\).serve\(\)"):
            dep.predict(X.head(1))
        dep.serve()
        assert dep.status == "ready" and dep.predict(X.head(3)).tolist() == model.predict(X.head(3)).tolist()
        assert nbdeploy.models(home=home)["iris"]["states"] == {1: "serving"}
    finally:
        nbdeploy.shutdown(home)


def test_a_prediction_too_large_for_one_request_is_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(100_000, 8)), columns=[f"f{i}" for i in range(8)])
    y = (X["f0"] + X["f1"] > 0).astype(int)
    model = LogisticRegression().fit(X.head(2000), y.head(2000))
    home = str(tmp_path / "store")
    dep = nbdeploy.deploy(model, X.head(500), name="wide", home=home)
    try:
        labels, ids = dep.predict(X, return_ids=True)  # about 15 MB of JSON: several requests
        assert labels.tolist() == model.predict(X).tolist()
        assert len(ids) == len(set(ids)) == len(X)
        assert dep.predict_proba(X).shape == (100_000, 2)
        assert dep.feedback(ids[-3:], y.tail(3))["accepted"] == 3
    finally:
        nbdeploy.shutdown(home)


def test_the_kernel_client_uses_its_stores_token(tmp_path: Path, iris) -> None:
    X, _, model = iris
    home = str(tmp_path / "store")
    dep = nbdeploy.deploy(model, X, name="iris", home=home)
    nbdeploy.shutdown(home)
    # a server bound beyond loopback requires the token it writes into the store
    server = subprocess.Popen([sys.executable, "-m", "nbdeploy.cli", "serve", "--home", home, "--host", "0.0.0.0",
                               "--port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if (Path(home) / "server.token").exists() and dep.status == "ready":
                break
            time.sleep(0.05)
        assert dep.predict(X.head(2)).tolist() == model.predict(X.head(2)).tolist()
    finally:
        server.terminate()
        server.wait(timeout=30)


WITHOUT_SKLEARN = """
import sys
sys.modules["sklearn"] = None  # as in an exported bundle's environment: serving without scikit-learn
from nbdeploy.cli import main
code = main(sys.argv[1:])
assert not any(m in sys.modules for m in ("skl2onnx", "IPython", "ipywidgets", "matplotlib")), "heavy imports"
sys.exit(code)
"""


def test_management_commands_work_without_scikit_learn(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    home = str(tmp_path / "store")
    nbdeploy.deploy(RandomForestClassifier(n_estimators=4, random_state=0).fit(X, X[:, 0] > 0), X, name="rf",
                    home=home)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", WITHOUT_SKLEARN, *args, "--home", home],
                              capture_output=True, text=True, timeout=120)

    listed = cli("list")
    assert listed.returncode == 0 and "rf: ready; versions 1 (serving)" in listed.stdout, listed.stderr
    stopped = cli("stop", "rf")
    assert stopped.returncode == 0 and "stopped serving rf" in stopped.stdout, stopped.stderr
    assert cli("shutdown").returncode == 0
    assert Store(home).server() is None


def logged(home: str, model: str, version: int) -> int:
    db = sqlite3.connect(Path(home) / "log.db")
    try:
        return db.execute("SELECT COUNT(*) FROM predictions WHERE model = ? AND version = ?",
                          (model, version)).fetchone()[0]
    finally:
        db.close()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_deleting_what_production_serves_stops_serving_it_without_a_restart(tmp_path: Path, iris, diabetes) -> None:
    Xi, _, iris_model = iris
    Xd, _, diabetes_model = diabetes
    home = str(tmp_path / "store")
    nbdeploy.deploy(iris_model, Xi, name="iris", home=home)
    dep = nbdeploy.deploy(iris_model, Xi, name="iris", home=home)  # version 2, production
    other = nbdeploy.deploy(diabetes_model, Xd, name="diabetes", home=home)
    try:
        server = Store(home).server()
        assert server is not None
        dep.predict(Xi.head(3))
        for _ in range(100):  # the server's writer commits the log a moment after it answers
            if logged(home, "iris", 2) == 3:
                break
            time.sleep(0.05)
        assert http_status(f"{server.url}/v2/models/iris/versions/1") == 200  # no alias: loaded on demand
        nbdeploy.delete("iris", 1, home=home)
        assert http_status(f"{server.url}/v2/models/iris/versions/1") == 404
        with pytest.raises(Conflict, match=r"version 2 of 'iris' is what its production alias points at"):
            nbdeploy.delete("iris", 2, home=home)
        assert http_status(f"{server.url}/v2/models/iris") == 200  # refused: still served

        removed = nbdeploy.delete("iris", 2, force=True, home=home)

        assert str(removed) == ("removed 'iris' version 2, its alias production and 3 logged predictions; "
                                "it is no longer served")
        assert http_status(f"{server.url}/v2/models/iris") == 404  # the same process, told through the store
        assert Store(home).server().pid == server.pid
        assert other.predict(Xd[:2]).tolist() == pytest.approx(diabetes_model.predict(Xd[:2]).tolist(), rel=1e-4)
        row = nbdeploy.models(home=home)["iris"]
        assert row["status"] == "stopped" and row["versions"] == [] and row["aliases"] == {}
        assert logged(home, "iris", 2) == 0 and not (Path(home) / "models" / "iris" / "2").exists()
        assert nbdeploy.deploy(iris_model, Xi, name="iris", home=home).version == 3  # 2 is not given again

        nbdeploy.delete("diabetes", force=True, home=home)
        assert http_status(f"{server.url}/v2/models/diabetes") == 404
        assert [row["name"] for row in nbdeploy.models(home=home).rows] == ["iris"]
        nbdeploy.delete("iris", force=True, home=home)  # the last model served: the server exits, as after a stop
        assert Store(home).server() is None
    finally:
        nbdeploy.shutdown(home)


def test_delete_prune_and_upgrade_from_the_command_line_without_scikit_learn(tmp_path: Path) -> None:
    home = str(tmp_path / "store")
    store = Store(home)
    for i in range(4):
        store.register("rf", f"model {i}".encode(), {})
    store.set_alias("rf", PRODUCTION, 4)
    db = sqlite3.connect(store.db_path)
    db.execute("PRAGMA user_version = 0")  # as a store made before nbdeploy recorded its format
    db.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", WITHOUT_SKLEARN, *args, "--home", home],
                              capture_output=True, text=True, timeout=120)

    upgraded = cli("upgrade")
    assert upgraded.returncode == 0 and f"upgraded the store at {home} from format 1 to" in upgraded.stdout, \
        upgraded.stderr
    planned = cli("prune", "--keep", "1", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout == "would remove 'rf' versions 1, 2, 3 and 0 logged predictions\n"
    refused = cli("delete", "rf", "4")
    assert refused.returncode == 2 and "nbdeploy: version 4 of 'rf' is what its production alias" in refused.stderr
    pruned = cli("prune", "rf", "--keep", "2")
    assert pruned.returncode == 0 and pruned.stdout == "removed 'rf' versions 1, 2 and 0 logged predictions\n"
    deleted = cli("delete", "rf", "--force")
    assert deleted.returncode == 0 and deleted.stdout.startswith("removed model 'rf' (versions 3, 4)"), deleted.stderr
    assert Store(home).model_names() == []


def test_delete_and_prune_in_the_magic_and_their_mistakes_as_one_line_usage_errors(tmp_path: Path, capsys) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    store = Store(tmp_path)
    for i in range(3):
        store.register("iris", f"model {i}".encode(), {})
    store.set_alias("iris", "staging", 2)
    config = Config()
    config.HistoryManager.enabled = False  # nothing written to ~/.ipython
    shell = InteractiveShell(config=config)  # its own shell: the global test shell is test_magics.py's
    shell.run_line_magic("load_ext", "nbdeploy")
    shell.run_line_magic("config", f"DeployMagics.home = {str(tmp_path)!r}")
    try:
        for line, needle in MAGIC_MISTAKES:
            with pytest.raises(UsageError) as raised:
                shell.run_line_magic("deploy", line)
            assert needle in str(raised.value) and "\n" not in str(raised.value), line
        assert [v.version for v in store.versions("iris")] == [1, 2, 3]  # nothing was deleted by a mistake
        shell.run_line_magic("deploy", "prune --keep 1 --dry-run")
        shell.run_line_magic("deploy", "delete iris 1")
        shell.run_line_magic("deploy", "delete iris --alias staging")
        assert capsys.readouterr().out.splitlines() == [
            "would remove 'iris' version 1 and 0 logged predictions", "removed 'iris' version 1 and 0 logged "
            "predictions", "removed the staging alias of 'iris'"]
    finally:
        shell.cleanup()
    assert [v.version for v in store.versions("iris")] == [2, 3] and store.aliases("iris") == {}


MAGIC_MISTAKES = [
    ("delete", "%deploy delete: the following arguments are required: name"),
    ("delete iris 1 2", "unrecognized arguments: 2"),
    ("delete irsi 1", "no model named 'irsi' (did you mean 'iris'?)"),
    ("delete iris staging", "a version to delete is a number, got 'staging'; to remove the alias 'staging'"),
    ("delete iris 2", "%deploy delete: version 2 of 'iris' is what its staging alias points at"),
    ("prune", "%deploy prune: the following arguments are required: --keep"),
    ("prune --keep two", "argument --keep: invalid int value: 'two'"),
]


def test_deleting_right_after_requests_leaves_none_of_their_logged_rows(tmp_path: Path, iris) -> None:
    # answers given a moment before the delete still wait in the server's log writer when it starts
    X, _, model = iris
    home = str(tmp_path / "store")
    nbdeploy.deploy(model, X, name="iris", home=home)
    dep = nbdeploy.deploy(model, X, name="iris", home=home)  # version 2
    try:
        nbdeploy.rollback("iris", home=home)  # production -> 1; version 2 answers by number only
        url = f"{Store(home).server().url}/v2/models/iris/versions/2/infer"
        body = json.dumps({"inputs": v2_inputs(dep.signature, X.head(1))}).encode()
        for _ in range(40):
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200

        removed = nbdeploy.delete("iris", 2, home=home)

        assert logged(home, "iris", 2) == 0
        assert removed.predictions == 40
    finally:
        nbdeploy.shutdown(home)
