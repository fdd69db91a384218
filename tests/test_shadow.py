"""Shadow mode: a candidate answers a copy of live traffic; clients only ever see production."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier

import nbdeploy
from nbdeploy.errors import NotFound
from nbdeploy.lifecycle.registration import register
from nbdeploy.store import Store

pytestmark = pytest.mark.server


def test_a_shadow_version_is_logged_and_compared_but_never_answers(tmp_path, iris):
    X, y, model = iris
    home = str(tmp_path)
    dep = nbdeploy.deploy(model, X, "iris", home=home)
    try:
        stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y)  # agrees on about 2/3
        register(stump, X, "iris", store=Store(home))
        nbdeploy.shadow("iris", 2, home=home)
        assert dep.version == 1
        for i in range(30):
            rows = X.iloc[i * 5:(i + 1) * 5]
            np.testing.assert_array_equal(dep.predict(rows), model.predict(rows))  # production answers
        body = {"inputs": [{"name": c, "datatype": "FP32", "shape": [1, 1], "data": [float(X[c].iloc[0])]}
                           for c in X.columns]}
        assert httpx.post(f"{dep.url}/infer", json=body).json()["model_version"] == "1"
        expected = float((stump.predict(X.iloc[:150]) == model.predict(X.iloc[:150])).mean())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shadow = dep.health()["shadow"]
            if shadow and shadow["n"] >= 151:
                break
            time.sleep(0.2)
        assert shadow["version"] == 2 and shadow["n"] == 151 and shadow["errors"] == 0  # rows, not requests
        assert abs(shadow["agreement"] - expected) < 0.05
        assert dep.health()["traffic"]["requests"] == 31  # shadow traffic is not counted as the model's
        nbdeploy.shadow("iris", None, home=home)
        assert "shadow" not in Store(home).aliases("iris")
        with pytest.raises(NotFound):
            nbdeploy.shadow("iris", 9, home=home)
    finally:
        nbdeploy.shutdown(home)
