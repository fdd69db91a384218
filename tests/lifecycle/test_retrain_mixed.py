"""Retraining a mixed-type pipeline on its logged traffic: the refit sees what the served model saw.

Numbers with missing values, text with None, a pandas Categorical and a boolean: the labelled traffic
is rebuilt from the prediction log through the signature, so the refitted pipeline converts faithfully
and serves better than the model it replaces.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

import nbdeploy

pytestmark = [pytest.mark.server, pytest.mark.slow]


def world(rng: np.random.Generator, n: int, drifted: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    X = pd.DataFrame({
        "spend": np.where(rng.random(n) < 0.15, np.nan, rng.gamma(2.0, 50.0, n)),
        "region": pd.Series(rng.choice(["north", "south", "east", None], n, p=[0.3, 0.3, 0.3, 0.1]),
                            dtype="str"),  # pandas' text dtype: None is a missing value (NaN)
        "plan": pd.Categorical(rng.choice(["basic", "plus", "pro"], n), categories=["basic", "plus", "pro"]),
        "member": rng.random(n) < 0.5,
    })
    spend = X["spend"].fillna(100.0).to_numpy()
    if drifted:  # the world changes: members from the south now churn whatever they spend
        y = ((X["member"] & (X["region"] == "south")) | (spend < 40)).astype(int).to_numpy()
    else:
        y = ((spend < 60) & ~X["member"]).astype(int).to_numpy()
    return X, y


def pipeline():
    prep = ColumnTransformer([
        ("spend", SimpleImputer(strategy="median"), ["spend"]),
        ("region", make_pipeline(SimpleImputer(strategy="constant", fill_value="unknown"),
                                 OneHotEncoder(handle_unknown="ignore")), ["region"]),
        ("plan", OrdinalEncoder(), ["plan"]),
        ("member", "passthrough", ["member"]),
    ])
    return make_pipeline(prep, HistGradientBoostingClassifier(max_iter=60, random_state=0))


def test_retrain_with_feedback_on_a_mixed_frame_is_faithful_promoted_and_better(tmp_path) -> None:
    rng = np.random.default_rng(1)
    home = str(tmp_path / "home")
    X, y = world(rng, 1500)
    run = nbdeploy.train(pipeline(), X, y, "mixed", home=home)
    dep = nbdeploy.deploy(run.model, X, "mixed", home=home)
    try:
        before = []
        for _ in range(6):
            Xb, yb = world(rng, 250, drifted=True)
            predicted, ids = dep.predict(Xb, return_ids=True)
            before.append(float((predicted == yb).mean()))
            dep.feedback(ids, yb)
        result = nbdeploy.retrain("mixed", with_feedback=True, promote=True, home=home)
        assert result.promoted, result.summary()
        assert result.decision is not None and result.decision.passed
        stored = nbdeploy.get("mixed", home=home)
        assert stored.version == result.version
        fidelity = stored.info()["fidelity"]
        assert fidelity["passed"] and fidelity["agreement"] == 1.0 and fidelity["max_abs_diff"] < 1e-4
        Xn, yn = world(rng, 1000, drifted=True)
        after = float((dep.predict(Xn) == yn).mean())
        assert after > np.mean(before) + 0.1, (before, after)
    finally:
        nbdeploy.shutdown(home)
