"""evaluate.py through its public functions: metrics match sklearn, gate, training runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.cluster import KMeans
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from nbdeploy.errors import InvalidInput
from nbdeploy.lifecycle.evaluation import EvaluationResult, evaluate, task_of
from nbdeploy.lifecycle.gate import GateDecision, compare
from nbdeploy.lifecycle.training import data_fingerprint, train

LOADERS = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}


def _logreg():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


@pytest.fixture(scope="module", params=sorted(LOADERS))
def fitted_classifier(request):
    X, y = LOADERS[request.param](return_X_y=True, as_frame=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=1,
                                              stratify=y)
    model = _logreg().fit(X_tr, y_tr)
    return model, X_te, y_te


@pytest.fixture(scope="module")
def diabetes():
    return load_diabetes(return_X_y=True, as_frame=True)


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True, as_frame=True)


# --- task_of -----------------------------------------------------------------

@pytest.mark.parametrize(("estimator", "task"), [
    (LogisticRegression(), "classification"), (_logreg(), "classification"),
    (Ridge(), "regression"), (make_pipeline(StandardScaler(), Ridge()), "regression"),
    (KMeans(n_clusters=2), "clustering"),
])
def test_task_of(estimator, task):
    assert task_of(estimator) == task


class _NotAnEstimator:
    """Has fit/predict but no sklearn tags (does not inherit BaseEstimator)."""

    def fit(self, X, y):
        return self

    def predict(self, X):
        return np.zeros(len(X))


@pytest.mark.parametrize("thing", [StandardScaler(), "model", _NotAnEstimator()])
def test_task_of_refuses_non_predictors(thing):
    with pytest.raises(InvalidInput):
        task_of(thing)


# --- classification ----------------------------------------------------------

def test_classification_metrics_match_sklearn(fitted_classifier):
    model, X, y = fitted_classifier
    result = evaluate(model, X, y)
    pred, proba = model.predict(X), model.predict_proba(X)
    m = result.metrics
    assert result.task == "classification" and result.n == len(y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    for key, fn in (("precision", skm.precision_score), ("recall", skm.recall_score),
                    ("f1", skm.f1_score)):
        expected = fn(y, pred, average="macro", zero_division=0)
        assert m[f"{key}_macro"] == pytest.approx(expected)
    if proba.shape[1] == 2:
        auc = skm.roc_auc_score(y, proba[:, 1])
    else:
        auc = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert m["roc_auc"] == pytest.approx(auc)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert result.confusion == skm.confusion_matrix(y, pred).tolist()
    assert result.score == m["accuracy"] and result.primary_metric == "accuracy"


def test_per_class_and_confusion_shape(fitted_classifier):
    model, X, y = fitted_classifier
    result = evaluate(model, X, y)
    k = len(model.classes_)
    assert result.classes == model.classes_.tolist()
    assert set(result.per_class) == {str(c) for c in model.classes_}
    for row in result.per_class.values():
        assert set(row) == {"precision", "recall", "f1", "support"}
    assert sum(row["support"] for row in result.per_class.values()) == len(y)
    assert np.shape(result.confusion) == (k, k)
    assert np.sum(result.confusion) == len(y)


def test_html_report_lists_metric_names_and_values(fitted_classifier):
    model, X, y = fitted_classifier
    result = evaluate(model, X, y, name="champion")
    html = result._repr_html_()
    for name, value in result.metrics.items():
        assert name in html
        assert f"{value:.4f}" in html
    assert "per class" in html and "confusion matrix" in html and "champion" in html
    assert "&lt;b&gt;" in evaluate(model, X, y, name="<b>")._repr_html_()  # escaped


def test_to_dict_is_strict_json_without_predictions(fitted_classifier):
    model, X, y = fitted_classifier
    d = evaluate(model, X, y).to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "y_true" not in d and "y_pred" not in d
    assert json.loads(text)["metrics"]["accuracy"] == d["metrics"]["accuracy"]


def test_string_labels_and_binary_auc_uses_second_class():
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    y = y.map({0: "malignant", 1: "benign"}).astype("string")
    model = _logreg().fit(X, y)
    result = evaluate(model, X, y)
    positive = model.classes_[1]
    proba = model.predict_proba(X)[:, 1]
    assert result.metrics["roc_auc"] == pytest.approx(
        skm.roc_auc_score(np.asarray(y) == positive, proba))
    assert result.classes == ["benign", "malignant"]
    json.dumps(result.to_dict(), allow_nan=False)


def test_without_predict_proba_probability_metrics_are_none(iris):
    X, y = iris
    result = evaluate(RidgeClassifier().fit(X, y), X, y)
    assert result.metrics["roc_auc"] is None and result.metrics["log_loss"] is None
    assert result.metrics["accuracy"] is not None


def test_confusion_keeps_fitted_classes_absent_from_the_sample(iris):
    X, y = iris
    model = _logreg().fit(X, y)
    only_two = y != 2
    result = evaluate(model, X[only_two], y[only_two])
    assert np.shape(result.confusion) == (3, 3)
    assert result.metrics["roc_auc"] is None  # class 2 never occurs: AUC undefined


def test_figure_is_a_matplotlib_figure(iris):
    from matplotlib.figure import Figure

    X, y = iris
    fig = evaluate(_logreg().fit(X, y), X, y).figure()
    assert isinstance(fig, Figure) and fig.axes


def test_importing_evaluate_does_not_import_matplotlib():
    code = "import sys, nbdeploy.lifecycle.evaluation; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# --- evaluate(): refusals ----------------------------------------------------

def test_unfitted_model_is_invalid_input(iris):
    X, y = iris
    with pytest.raises(InvalidInput, match="not fitted") as err:
        evaluate(LogisticRegression(), X, y)
    assert "\n" not in str(err.value) and err.value.status == 400


def test_length_mismatch_and_clusterer_are_invalid_input(iris):
    X, y = iris
    model = _logreg().fit(X, y)
    with pytest.raises(InvalidInput, match="same number of rows"):
        evaluate(model, X, y[:-1])
    with pytest.raises(InvalidInput, match="clusterer"):
        evaluate(KMeans(n_clusters=3, n_init=1, random_state=0).fit(X), X, y)
    with pytest.raises(InvalidInput, match=r"cannot evaluate .*feature"):
        evaluate(model, X.iloc[:, :2], y)


# --- regression --------------------------------------------------------------

def test_regression_metrics_match_sklearn(diabetes):
    X, y = diabetes
    model = Ridge().fit(X, y)
    result = evaluate(model, X, y)
    pred = model.predict(X)
    m = result.metrics
    assert result.primary_metric == "r2" and result.score == m["r2"]
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert m["rmse"] == pytest.approx(skm.root_mean_squared_error(y, pred))
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert m["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred))
    assert result.residuals["mean"] == pytest.approx(float(np.mean(y - pred)))
    assert result.residuals["max"] == pytest.approx(float(np.max(y - pred)))
    assert result.per_class is None and result.confusion is None
    html = result._repr_html_()
    assert "rmse" in html and f"{m['rmse']:.4f}" in html
    assert "data:image/png;base64," in html
    json.dumps(result.to_dict(), allow_nan=False)


def test_mape_is_none_when_y_has_zeros(diabetes):
    X, y = diabetes
    y = y.copy()
    y.iloc[:5] = 0.0
    result = evaluate(Ridge().fit(X, y), X, y)
    assert result.metrics["mape"] is None
    assert result.metrics["mae"] is not None


# --- compare -----------------------------------------------------------------

@pytest.fixture(scope="module")
def champion_and_weak(iris):
    X, y = iris
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, random_state=0, stratify=y)
    strong = evaluate(_logreg().fit(X_tr, y_tr), X_te, y_te, name="logreg")
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X_tr, y_tr)
    return strong, evaluate(stump, X_te, y_te, name="stump")


def test_better_challenger_passes(champion_and_weak):
    strong, weak = champion_and_weak
    decision = compare(weak, strong)
    assert isinstance(decision, GateDecision) and decision.passed
    assert decision.metric == "accuracy"
    assert decision.challenger_score == strong.score
    json.dumps(decision.to_dict(), allow_nan=False)


def test_worse_challenger_is_refused_with_both_scores(champion_and_weak):
    strong, weak = champion_and_weak
    decision = compare(strong, weak, tolerance=0.05)
    assert not decision.passed
    assert f"{strong.score:.4f}" in decision.reason
    assert f"{weak.score:.4f}" in decision.reason
    html = decision._repr_html_()
    assert "REFUSED" in html and html.count("data:image/png;base64,") == 2
    assert decision.summary().startswith("REFUSED: challenger accuracy")


def test_tolerance_lets_a_slightly_worse_challenger_through(champion_and_weak):
    strong, weak = champion_and_weak
    gap = strong.score - weak.score
    assert compare(strong, weak, tolerance=gap + 1e-9).passed
    assert not compare(strong, weak, tolerance=gap / 2).passed


def test_min_score_floor(champion_and_weak):
    strong, weak = champion_and_weak
    assert compare(None, strong, min_score=0.5).passed
    refused = compare(weak, strong, min_score=1.01)
    assert not refused.passed and "floor" in refused.reason
    assert not compare(None, weak, min_score=0.9).passed
    assert compare(None, weak).passed  # no champion, no floor: nothing to gate on


def test_compare_refuses_mismatched_or_bad_arguments(champion_and_weak, diabetes):
    strong, _ = champion_and_weak
    X, y = diabetes
    regression = evaluate(Ridge().fit(X, y), X, y)
    with pytest.raises(InvalidInput, match="regression"):
        compare(strong, regression)
    with pytest.raises(InvalidInput, match="tolerance"):
        compare(strong, strong, tolerance=-0.1)
    with pytest.raises(InvalidInput):
        compare(strong, {"accuracy": 1.0})


# --- train -------------------------------------------------------------------

def test_train_returns_a_fitted_clone_and_held_out_evaluation(iris):
    X, y = iris
    estimator = _logreg()
    run = train(estimator, X, y, test_size=0.25, stratify=True)
    assert isinstance(run.evaluation, EvaluationResult)
    assert run.evaluation.n == len(run.X_test) == len(run.y_test)
    assert len(run.X_train) + len(run.X_test) == len(X)
    assert run.score == pytest.approx(skm.accuracy_score(run.y_test,
                                                         run.model.predict(run.X_test)))
    with pytest.raises(InvalidInput, match="not fitted"):
        evaluate(estimator, X, y)  # the caller's estimator was left alone
    d = json.loads(json.dumps(run.to_dict(), allow_nan=False))
    assert d["n_train"] == len(run.X_train) and d["cv_scores"] is None
    assert "logisticregression" in d["params"]["steps"][1][0]
    assert run.fingerprint[:16] in run._repr_html_()


def test_stratify_preserves_class_ratios():
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    run = train(_logreg(), X, y, stratify=True, seed=3)
    for part in (run.y_train, run.y_test):
        ratio = part.value_counts(normalize=True).sort_index()
        full = y.value_counts(normalize=True).sort_index()
        assert np.allclose(ratio, full, atol=1 / len(part))


def test_seed_makes_runs_reproducible(iris):
    X, y = iris
    a = train(RandomForestClassifier(n_estimators=15), X, y, seed=7)
    b = train(RandomForestClassifier(n_estimators=15), X, y, seed=7)
    assert a.evaluation.metrics == b.evaluation.metrics
    assert list(a.X_test.index) == list(b.X_test.index)
    assert a.params["random_state"] == 7
    c = train(RandomForestClassifier(n_estimators=15), X, y, seed=8)
    assert list(c.X_test.index) != list(a.X_test.index)


def test_cv_gives_k_scores(iris):
    X, y = iris
    run = train(_logreg(), X, y, cv=4)
    assert len(run.cv_scores) == 4
    assert all(0.0 <= s <= 1.0 for s in run.cv_scores)
    assert "4 folds" in run._repr_html_()


def test_train_accepts_numpy_and_regression(diabetes):
    X, y = load_iris(return_X_y=True)
    assert train(_logreg(), X, y, stratify=True).evaluation.task == "classification"
    Xd, yd = diabetes
    run = train(Ridge(), Xd.to_numpy(), yd.to_numpy(), cv=3)
    assert run.evaluation.primary_metric == "r2" and len(run.cv_scores) == 3


def test_fingerprint_is_stable_and_tracks_the_data(iris):
    X, y = iris
    fp = data_fingerprint(X, y)
    assert fp == data_fingerprint(X.copy(), y.copy()) == train(_logreg(), X, y).fingerprint
    changed = X.copy()
    changed.iloc[0, 0] += 0.1
    assert data_fingerprint(changed, y) != fp
    assert data_fingerprint(X.rename(columns={X.columns[0]: "other"}), y) != fp
    assert data_fingerprint(X, y.astype("float64")) != fp
    assert data_fingerprint(X.reset_index(drop=True).set_axis(range(1, 151)), y) == fp


def test_fingerprint_is_the_same_in_another_process(iris):
    X, y = iris
    code = ("from sklearn.datasets import load_iris; "
            "from nbdeploy.lifecycle.training import data_fingerprint; "
            "print(data_fingerprint(*load_iris(return_X_y=True, as_frame=True)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == data_fingerprint(X, y)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"test_size": 0}, "test_size"), ({"test_size": 1}, "test_size"),
    ({"test_size": 1.5}, "test_size"), ({"test_size": "0.2"}, "test_size"),
    ({"cv": 1}, "cv"), ({"cv": True}, "cv"), ({"cv": 2.5}, "cv"),
])
def test_train_refuses_bad_options(iris, kwargs, expected):
    X, y = iris
    with pytest.raises(InvalidInput, match=expected) as err:
        train(_logreg(), X, y, **kwargs)
    assert "\n" not in str(err.value) and "expected" in str(err.value)


def test_train_refuses_bad_data_and_objects(iris, diabetes):
    X, y = iris
    with pytest.raises(InvalidInput, match="one y value per row"):
        train(_logreg(), X, y[:-3])
    with pytest.raises(InvalidInput, match="scikit-learn estimator"):
        train("LogisticRegression", X, y)
    with pytest.raises(InvalidInput, match="stratify"):
        train(Ridge(), *diabetes, stratify=True)
    with pytest.raises(InvalidInput, match="clusterer"):
        train(KMeans(n_clusters=3), X, y)
    few = pd.Series([0] * 148 + [1, 2])
    with pytest.raises(InvalidInput, match="cannot train"):
        train(_logreg(), X, few, stratify=True)


def test_the_package_level_names_stay_functions_after_every_module_is_imported():
    import importlib
    import pkgutil

    import nbdeploy

    for info in pkgutil.walk_packages(nbdeploy.__path__, "nbdeploy."):
        if not info.name.startswith("nbdeploy.convert.boosters"):
            importlib.import_module(info.name)
    for name in nbdeploy.__all__:
        if name != "__version__":
            assert callable(getattr(nbdeploy, name)), f"nbdeploy.{name} is shadowed by a module"
