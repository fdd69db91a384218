"""Shared fixtures: fitted models on the datasets scikit-learn ships, and real server stores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pgserver
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge

import nbdeploy


@pytest.fixture(autouse=True)
def _no_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never write to the working directory's store."""
    monkeypatch.setenv("NBDEPLOY_HOME", str(tmp_path / "default-home"))


@pytest.fixture(scope="session")
def ipython():
    """The test run's one IPython shell. IPython's ``globalipapp.get_ipython`` answers only its first
    caller (later calls return None), so every test that needs a shell takes this fixture."""
    from IPython.testing import globalipapp

    globalipapp.start_ipython()
    return globalipapp.get_ipython()


@pytest.fixture(scope="session")
def iris():
    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y, LogisticRegression(max_iter=500).fit(X, y)


@pytest.fixture(scope="session")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    return X, y, Ridge(alpha=0.5).fit(X, y)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, iris, diabetes) -> Iterator[dict]:
    """One real server process with iris (classifier, DataFrame) and diabetes (regressor, array)."""
    home = str(tmp_path_factory.mktemp("served"))
    Xi, _, iris_model = iris
    Xd, _, diabetes_model = diabetes
    deps = {
        "iris": nbdeploy.deploy(iris_model, Xi, name="iris", home=home),
        "diabetes": nbdeploy.deploy(diabetes_model, Xd, name="diabetes", home=home),
    }
    yield {"home": home, "deps": deps, "url": deps["iris"].server_url}
    nbdeploy.shutdown(home)


def _postgres_required() -> bool:
    """CI (and NBDEPLOY_REQUIRE_POSTGRES=1) installs PostgreSQL, so a missing server there is a failure."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("NBDEPLOY_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def postgres() -> Iterator[pgserver.PostgresServer]:
    """The session's throwaway PostgreSQL server (tests/pgserver.py); skips where PostgreSQL is missing."""
    server = pgserver.shared_server()
    if server is None:
        probe = pgserver.PostgresServer()
        probe.available()
        reason = probe.reason or "PostgreSQL is unavailable"
        if _postgres_required():
            pytest.fail(f"PostgreSQL is required here (CI or NBDEPLOY_REQUIRE_POSTGRES=1): {reason}")
        pytest.skip(reason)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres: pgserver.PostgresServer) -> Iterator[str]:
    """The URL of a new empty database on the session's PostgreSQL server; this process's pool of
    connections to it is closed after the test (each test has its own database: pools would add up)."""
    yield postgres.fresh_database()
    from nbdeploy.store import postgres as backend

    if backend.available():
        backend.close_pools()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_home(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A new store's ``home`` on each backend: a directory (SQLite), then a fresh PostgreSQL database
    (this machine's files for it in ``tmp_path/local``, also for the server processes a test starts)."""
    if request.param == "sqlite":
        return str(tmp_path / "store")
    url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "local"))
    return url

