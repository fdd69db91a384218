"""A source store to export from: a DataFrame classifier with two versions, an array regressor and a
classifier with a text column and string labels, deployed as a notebook would, then the server stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

import nbdeploy


def pets_data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"kind": rng.choice(["cat", "dog", "fish"], 90), "age": rng.uniform(0, 15, 90).round(1)})
    return X, np.where((X["kind"] == "dog") | (X["age"] > 10), "walks", "stays")


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory, iris, diabetes) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("export-source")
    Xi, yi, iris_model = iris
    Xd, _, diabetes_model = diabetes
    Xp, yp = pets_data()
    pets_model = make_pipeline(make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["kind"]),
                                                       remainder="passthrough"), LogisticRegression()).fit(Xp, yp)
    try:
        nbdeploy.deploy(LogisticRegression(C=0.05, max_iter=1000).fit(Xi, yi), Xi, name="iris", home=str(home))
        nbdeploy.deploy(iris_model, Xi, name="iris", home=str(home))  # version 2, production
        nbdeploy.deploy(diabetes_model, Xd, name="diabetes", home=str(home))
        nbdeploy.deploy(pets_model, Xp, name="pets", home=str(home))
    finally:
        nbdeploy.shutdown(str(home))
    yield {"home": home, "iris": (Xi, iris_model), "diabetes": (Xd, diabetes_model), "pets": (Xp, pets_model)}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Where an export goes (does not exist yet)."""
    return tmp_path / "export"
