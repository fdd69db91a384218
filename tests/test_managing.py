"""Managing what is deployed: one view of the store, serving again after a stop, large predictions,
a server that wants its token, and the management commands where scikit-learn is not installed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

import nbdeploy
from nbdeploy.errors import NotFound
from nbdeploy.store import Store

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
