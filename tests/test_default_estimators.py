"""What data scientists write without options deploys and answers as scikit-learn does.

``OneHotEncoder()`` and ``OrdinalEncoder()`` refuse unknown categories by default: such a model deploys
(the server warms it up with values it knows), answers known values, and refuses an unknown one with a
400 naming the input and the value, in the server, the client and the library alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

import nbdeploy
from nbdeploy.errors import NbdeployError

pytestmark = pytest.mark.server


def frame(n: int = 200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"city": rng.choice(["paris", "lyon", "nice"], n).astype(object),
                      "plan": rng.choice(["basic", "pro"], n).astype(object),
                      "age": rng.integers(18, 80, n).astype(float)})
    y = ((X["city"] == "paris") ^ (X["age"] > 50)).astype(int).to_numpy()
    return X, y


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    home = str(tmp_path_factory.mktemp("defaults"))
    X, y = frame()
    model = make_pipeline(make_column_transformer((OneHotEncoder(), ["city"]), (OrdinalEncoder(), ["plan"]),
                                                 remainder="passthrough"),
                          LogisticRegression(max_iter=500)).fit(X, y)
    dep = nbdeploy.deploy(model, X, name="defaults", home=home)
    yield {"dep": dep, "model": model, "X": X, "home": home}
    nbdeploy.shutdown(home)


def test_a_default_one_hot_encoder_deploys_and_answers_as_scikit_learn(deployed) -> None:
    X, model, dep = deployed["X"], deployed["model"], deployed["dep"]
    assert dep.status == "ready"
    assert dep.predict(X).tolist() == model.predict(X).tolist()
    details = requests.get(dep.url, timeout=10).json()["parameters"]["input_details"]
    assert details["city"] == {"categories": ["lyon", "nice", "paris"], "unknown_categories": "refused (400)"}
    assert details["plan"] == {"categories": ["basic", "pro"], "unknown_categories": "refused (400)"}


def test_an_unknown_category_is_a_400_naming_the_input_and_value_everywhere(deployed) -> None:
    X, dep = deployed["X"], deployed["dep"]
    bad = X.head(3).assign(city=["paris", "berlin", "nice"])
    with pytest.raises(ValueError, match="unknown categor"):
        deployed["model"].predict(bad)  # scikit-learn refuses it too
    expected = ("input 'city': got the unknown category 'berlin' at row 1; the model's encoder was fitted with "
                "'lyon', 'nice', 'paris' and refuses other values (handle_unknown='error')")
    with pytest.raises(NbdeployError) as client:
        dep.predict(bad)
    with pytest.raises(NbdeployError) as library:
        nbdeploy.load("defaults", home=deployed["home"]).predict(bad)
    body = {"inputs": [{"name": c, "datatype": "FP64" if c == "age" else "BYTES", "shape": [3, 1],
                        "data": bad[c].tolist()} for c in bad.columns]}
    answer = requests.post(f"{dep.url}/infer", json=body, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"] == client.value.message == library.value.message == expected
    assert client.value.status == library.value.status == 400
