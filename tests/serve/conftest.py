"""Stores with converted models for in-process server tests (no server process, no deploy())."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from serve_helpers import BASE_URL, TestClient, add_version, converted

from nbdeploy.serve.app import create_app
from nbdeploy.serve.config import ServeConfig
from nbdeploy.store import Store


@pytest.fixture(scope="session")
def iris_onnx(iris) -> tuple[bytes, dict[str, Any]]:
    X, _, model = iris
    return converted(model, X)


@pytest.fixture(scope="session")
def diabetes_onnx(diabetes) -> tuple[bytes, dict[str, Any]]:
    X, _, model = diabetes
    return converted(model, X)


@pytest.fixture(scope="session")
def mixed_onnx() -> tuple[bytes, dict[str, Any]]:
    """A DataFrame model with a float, an integer, a boolean and a text column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=60), "n": rng.integers(0, 5, 60), "flag": rng.random(60) > 0.5,
                      "city": rng.choice(["paris", "oslo", "rome"], 60).astype(object)})
    y = (X["x"] + X["n"] > 2).astype(int)
    prep = ColumnTransformer([("num", "passthrough", ["x", "n", "flag"]),
                              ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"])])
    model = Pipeline([("prep", prep), ("clf", LogisticRegression())]).fit(X, y)
    return converted(model, X)


@pytest.fixture
def store(tmp_path: Path, iris_onnx, diabetes_onnx) -> Store:
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    add_version(store, "diabetes", diabetes_onnx)
    return store


@pytest.fixture
def make_client(store: Store) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**create_app kwargs)``: an in-process client with the lifespan running."""
    clients: list[TestClient] = []

    def make(**kwargs: Any) -> TestClient:
        kwargs.setdefault("poll_seconds", 0.05)
        kwargs.setdefault("config", ServeConfig())
        client = TestClient(create_app(kwargs.pop("store", store), **kwargs), base_url=BASE_URL)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
