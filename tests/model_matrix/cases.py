"""The coverage matrix: estimators and pipelines nbdeploy deploys, on data scikit-learn ships.

Every case is small (a few hundred rows, 20 trees) so the whole matrix runs through a real server
in about a minute; the data is in :mod:`model_matrix.data`. Rows come first as users write them
without options (``OneHotEncoder()``, ``HistGradientBoosting*`` on pandas categories, forests with an
even number of trees, whose held-out rows include exact ties), then with options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_matrix.data import TUMOUR_NUMBERS, dataset

__all__ = ["Case", "cases", "dataset", "tumour_pipeline"]


@dataclass(frozen=True)
class Case:
    name: str  # also the model name in the store
    family: str
    model: str  # what the row shows
    dataset: str
    build: Callable[[], Any]
    requires: str | None = None  # optional library (lightgbm, xgboost)
    expect: str = "passed"  # "refused": the fidelity gate must stop it; "unsupported": refused before converting


def tumour_pipeline() -> Any:
    """SimpleImputer(median) + StandardScaler, one-hot strings, a passthrough bool, HistGradientBoosting."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prep = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), list(TUMOUR_NUMBERS)),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["clinic", "scanner"]),
        ("flag", "passthrough", ["follow_up"]),
    ])
    return Pipeline([("prep", prep), ("model", HistGradientBoostingClassifier(max_iter=50, random_state=0))])


def _mixed_prep(encoder: str = "onehot", scale: bool = True) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric = make_pipeline(SimpleImputer(strategy="median"), *([StandardScaler()] if scale else []))
    if encoder == "onehot":
        cats: Any = OneHotEncoder(handle_unknown="ignore")
    elif encoder == "ordinal":
        cats = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    else:  # impute the most frequent string first, then one-hot
        cats = make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore"))
    return ColumnTransformer([
        ("num", numeric, ["age", "income", "visits", "referrals"]),
        ("cat", cats, ["city", "plan", "tier"]),
        ("flags", SimpleImputer(strategy="most_frequent"), ["active", "newsletter"]),
    ])


def _text_prep() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder

    return ColumnTransformer([("text", TfidfVectorizer(), "review"), ("stars", MinMaxScaler(), ["stars"]),
                              ("category", OneHotEncoder(handle_unknown="ignore"), ["category"])])


def _encoded_prep(encoder: Any) -> Any:
    """The mixed frame's numbers imputed and scaled, its text and category columns through ``encoder``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["age", "income", "visits"]),
        ("cat", encoder, ["city", "plan", "tier"]),
    ])


def _selected_prep() -> Any:
    """Columns chosen by dtype with make_column_selector, as notebooks often do."""
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), make_column_selector(dtype_include="number")),
        ("cat", OneHotEncoder(handle_unknown="ignore"),
         make_column_selector(dtype_include=["object", "string", "category"])),
    ])


def _log_prep(func: Any) -> Any:
    """``FunctionTransformer(func)`` on the skewed columns, the rest imputed or one-hot encoded."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    return ColumnTransformer([
        ("log", FunctionTransformer(func), ["income", "visits"]),
        ("age", SimpleImputer(strategy="median"), ["age"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan", "tier"]),
    ])


def _categorical_mask_hgb() -> Any:
    """Categories ordinal-encoded first, then declared categorical by position (scikit-learn's own example)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    prep = ColumnTransformer([("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                               ["city", "plan", "tier"]), ("num", "passthrough", ["age", "income", "visits"])])
    model = HistGradientBoostingClassifier(max_iter=20, categorical_features=[0, 1, 2], random_state=0)
    return Pipeline([("prep", prep), ("model", model)])


def _passthrough_hgb() -> Any:
    """Encode the text columns, pass every other column through as it is."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.preprocessing import OneHotEncoder

    prep = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["clinic", "scanner"])],
                             remainder="passthrough")
    return _pipe(prep, HistGradientBoostingClassifier(max_iter=20, random_state=0))


def _pipe(*steps: Any) -> Any:
    from sklearn.pipeline import make_pipeline

    return make_pipeline(*steps)


def cases() -> list[Case]:
    """The matrix rows, in the order the docs show them."""
    from sklearn import calibration, cluster, ensemble, linear_model, naive_bayes, neighbors, neural_network, svm, tree
    from sklearn import preprocessing as pp
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, PolynomialFeatures, StandardScaler

    e, lm = ensemble, linear_model
    rows = [
        Case("iris-logreg", "linear", "LogisticRegression", "iris", lambda: lm.LogisticRegression(max_iter=500)),
        Case("cancer-scaled-logreg", "linear", "StandardScaler + LogisticRegression", "breast_cancer-df",
             lambda: _pipe(StandardScaler(), lm.LogisticRegression(max_iter=500))),
        Case("wine-ridge-clf", "linear", "StandardScaler + RidgeClassifier", "wine-df",
             lambda: _pipe(StandardScaler(), lm.RidgeClassifier())),
        Case("cancer-sgd", "linear", "StandardScaler + SGDClassifier(log_loss)", "breast_cancer",
             lambda: _pipe(StandardScaler(), lm.SGDClassifier(loss="log_loss", random_state=0))),
        Case("diabetes-linreg", "linear", "LinearRegression", "diabetes-df", lambda: lm.LinearRegression()),
        Case("diabetes-poly-ridge", "linear", "PolynomialFeatures + StandardScaler + Ridge", "diabetes",
             lambda: _pipe(PolynomialFeatures(2), StandardScaler(), lm.Ridge(alpha=1.0))),
        Case("diabetes-elasticnet", "linear", "ElasticNet", "diabetes", lambda: lm.ElasticNet(alpha=0.01)),
        Case("iris-tree", "tree", "DecisionTreeClassifier", "iris-df",
             lambda: tree.DecisionTreeClassifier(random_state=0)),
        Case("diabetes-tree", "tree", "DecisionTreeRegressor", "diabetes",
             lambda: tree.DecisionTreeRegressor(max_depth=6, random_state=0)),
        Case("wine-forest", "forest", "RandomForestClassifier(20)", "wine-df",
             lambda: e.RandomForestClassifier(n_estimators=20, random_state=0)),
        Case("cancer-extra-trees", "forest", "ExtraTreesClassifier(20) (exact ties)", "breast_cancer",
             lambda: e.ExtraTreesClassifier(n_estimators=20, random_state=0)),
        Case("cancer-forest-10", "forest", "RandomForestClassifier(10) (exact ties)", "breast_cancer-df",
             lambda: e.RandomForestClassifier(n_estimators=10, random_state=0)),
        Case("diabetes-forest", "forest", "RandomForestRegressor(20)", "diabetes-df",
             lambda: e.RandomForestRegressor(n_estimators=20, random_state=0)),
        Case("iris-gboost", "boosting", "GradientBoostingClassifier(20)", "iris",
             lambda: e.GradientBoostingClassifier(n_estimators=20, random_state=0)),
        Case("diabetes-gboost", "boosting", "GradientBoostingRegressor(20)", "diabetes",
             lambda: e.GradientBoostingRegressor(n_estimators=20, random_state=0)),
        Case("cancer-hgb", "boosting", "HistGradientBoostingClassifier(20)", "breast_cancer-df",
             lambda: e.HistGradientBoostingClassifier(max_iter=20, random_state=0)),
        Case("diabetes-hgb", "boosting", "HistGradientBoostingRegressor(20)", "diabetes-df",
             lambda: e.HistGradientBoostingRegressor(max_iter=20, random_state=0)),
        Case("cancer-nan-impute-hgb", "boosting", "SimpleImputer(median) + StandardScaler + HistGradientBoosting(20)",
             "breast_cancer-nan", lambda: _pipe(_imputer(), StandardScaler(),
                                                e.HistGradientBoostingClassifier(max_iter=20, random_state=0))),
        Case("mixed-cat-hgb", "boosting", "HistGradientBoostingClassifier(20) on pandas categories", "mixed-cat",
             lambda: e.HistGradientBoostingClassifier(max_iter=20, random_state=0)),
        Case("mixed-cat-hgb-reg", "boosting", "HistGradientBoostingRegressor(20) on pandas categories",
             "mixed-cat-reg", lambda: e.HistGradientBoostingRegressor(max_iter=20, random_state=0)),
        Case("mixed-hgb-categorical-mask", "boosting",
             "OrdinalEncoder + HistGradientBoosting(20, categorical_features=[0, 1, 2])", "mixed",
             _categorical_mask_hgb),
        Case("mixed-nullable-hgb", "boosting", "HistGradientBoosting(20) on nullable Int64/boolean with pd.NA",
             "mixed-numbers", lambda: e.HistGradientBoostingClassifier(max_iter=20, random_state=0)),
        Case("wine-svc", "svm", "StandardScaler + SVC (labels only)", "wine-df",
             lambda: _pipe(StandardScaler(), svm.SVC())),
        Case("cancer-linear-svc", "svm", "StandardScaler + LinearSVC (labels only)", "breast_cancer",
             lambda: _pipe(StandardScaler(), svm.LinearSVC())),
        Case("diabetes-svr", "svm", "StandardScaler + SVR", "diabetes", lambda: _pipe(StandardScaler(), svm.SVR(C=50))),
        Case("iris-knn", "k-NN", "KNeighborsClassifier", "iris-df", lambda: neighbors.KNeighborsClassifier()),
        Case("cancer-knn-4", "k-NN", "KNeighborsClassifier(4) (exact ties)", "breast_cancer-df",
             lambda: neighbors.KNeighborsClassifier(n_neighbors=4)),
        Case("cancer-knn-distance", "k-NN", "KNeighborsClassifier(weights='distance')", "breast_cancer-df",
             lambda: neighbors.KNeighborsClassifier(weights="distance")),
        Case("diabetes-knn", "k-NN", "StandardScaler + KNeighborsRegressor", "diabetes",
             lambda: _pipe(StandardScaler(), neighbors.KNeighborsRegressor())),
        Case("wine-gaussian-nb", "naive Bayes", "GaussianNB", "wine", lambda: naive_bayes.GaussianNB()),
        Case("digits-multinomial-nb", "naive Bayes", "MultinomialNB", "digits", lambda: naive_bayes.MultinomialNB()),
        Case("iris-mlp", "MLP", "StandardScaler + MLPClassifier", "iris",
             lambda: _pipe(StandardScaler(), neural_network.MLPClassifier((16,), max_iter=2000, random_state=0))),
        Case("diabetes-mlp", "MLP", "MinMaxScaler + MLPRegressor", "diabetes-df",
             lambda: _pipe(MinMaxScaler(), neural_network.MLPRegressor(
                 hidden_layer_sizes=(16,), learning_rate_init=0.05, max_iter=400, tol=1e-3, random_state=0))),
        Case("cancer-calibrated-svc", "calibration", "CalibratedClassifierCV(LinearSVC)", "breast_cancer-df",
             lambda: _pipe(StandardScaler(), calibration.CalibratedClassifierCV(svm.LinearSVC(), cv=3))),
        Case("wine-calibrated-forest", "calibration", "CalibratedClassifierCV(RandomForest(20))", "wine",
             lambda: calibration.CalibratedClassifierCV(e.RandomForestClassifier(n_estimators=20, random_state=0),
                                                        cv=3)),
        Case("cancer-calibrated-isotonic", "calibration", "CalibratedClassifierCV(LogisticRegression, isotonic)",
             "breast_cancer", lambda: calibration.CalibratedClassifierCV(lm.LogisticRegression(max_iter=5000),
                                                                         method="isotonic", cv=3)),
        Case("wine-calibrated-isotonic-pipeline", "calibration",
             "CalibratedClassifierCV(StandardScaler + LinearSVC, isotonic)", "wine-df",
             lambda: calibration.CalibratedClassifierCV(_pipe(StandardScaler(), svm.LinearSVC()), method="isotonic",
                                                        cv=3)),
        Case("iris-kmeans", "clustering", "KMeans(3) (cluster labels)", "iris-df",
             lambda: cluster.KMeans(n_clusters=3, n_init=3, random_state=0)),
        Case("tumours-impute-hgb", "pipeline", "ColumnTransformer(imputer, scaler, OneHotEncoder, bool) + HGB(50)",
             "tumours", tumour_pipeline),
        Case("mixed-onehot-hgb", "pipeline", "ColumnTransformer(imputer, scaler, OneHotEncoder) + HGB(20)", "mixed",
             lambda: Pipeline([("prep", _mixed_prep()),
                               ("model", e.HistGradientBoostingClassifier(max_iter=20, random_state=0))])),
        Case("mixed-ordinal-forest", "pipeline", "ColumnTransformer(imputer, OrdinalEncoder) + RandomForest(20)",
             "mixed", lambda: Pipeline([("prep", _mixed_prep("ordinal", scale=False)),
                                        ("model", e.RandomForestClassifier(n_estimators=20, random_state=0))])),
        Case("mixed-impute-logreg", "pipeline",
             "ColumnTransformer(string imputer + OneHotEncoder) + LogisticRegression", "mixed",
             lambda: Pipeline([("prep", _mixed_prep("impute")), ("model", lm.LogisticRegression(max_iter=1000))])),
        Case("mixed-ridge", "pipeline", "ColumnTransformer(imputer, scaler, OneHotEncoder) + Ridge", "mixed-reg",
             lambda: Pipeline([("prep", _mixed_prep()), ("model", lm.Ridge())])),
        Case("reviews-tfidf-logreg", "pipeline", "ColumnTransformer(TfidfVectorizer, MinMaxScaler, OneHotEncoder) "
             "+ LogisticRegression", "reviews",
             lambda: Pipeline([("prep", _text_prep()), ("model", lm.LogisticRegression(max_iter=1000))])),
        Case("mixed-onehot-default", "preprocessing", "ColumnTransformer(OneHotEncoder()) + LogisticRegression",
             "mixed", lambda: _pipe(_encoded_prep(OneHotEncoder()), lm.LogisticRegression(max_iter=1000))),
        Case("mixed-ordinal-default", "preprocessing", "ColumnTransformer(OrdinalEncoder()) + HGB(20)", "mixed",
             lambda: _pipe(_encoded_prep(pp.OrdinalEncoder()),
                           e.HistGradientBoostingClassifier(max_iter=20, random_state=0))),
        Case("mixed-target-encoder", "preprocessing", "ColumnTransformer(TargetEncoder()) + LogisticRegression",
             "mixed", lambda: _pipe(_encoded_prep(pp.TargetEncoder()), lm.LogisticRegression(max_iter=1000))),
        Case("cancer-kbins", "preprocessing", "KBinsDiscretizer() + LogisticRegression", "breast_cancer-df",
             lambda: _pipe(pp.KBinsDiscretizer(), lm.LogisticRegression(max_iter=1000))),
        Case("diabetes-spline", "preprocessing", "SplineTransformer() + Ridge", "diabetes-df",
             lambda: _pipe(pp.SplineTransformer(), lm.Ridge())),
        Case("diabetes-spline-periodic", "preprocessing", "SplineTransformer(extrapolation='periodic') + Ridge",
             "diabetes-df", lambda: _pipe(pp.SplineTransformer(extrapolation="periodic"), lm.Ridge()),
             expect="unsupported"),
        Case("diabetes-power", "preprocessing", "PowerTransformer() + Ridge", "diabetes-df",
             lambda: _pipe(pp.PowerTransformer(), lm.Ridge())),
        Case("cancer-quantile", "preprocessing", "QuantileTransformer(n_quantiles=200) + LogisticRegression",
             "breast_cancer-df", lambda: _pipe(pp.QuantileTransformer(n_quantiles=200),
                                               lm.LogisticRegression(max_iter=1000))),
        Case("cancer-quantile-normal", "preprocessing", "QuantileTransformer(output_distribution='normal') + LR",
             "breast_cancer-df", lambda: _pipe(pp.QuantileTransformer(n_quantiles=200, output_distribution="normal"),
                                               lm.LogisticRegression(max_iter=1000)), expect="unsupported"),
        Case("mixed-log1p", "preprocessing", "ColumnTransformer(FunctionTransformer(np.log1p)) + Ridge", "mixed-reg",
             lambda: _pipe(_log_prep(np.log1p), lm.Ridge())),
        Case("mixed-lambda", "preprocessing", "ColumnTransformer(FunctionTransformer(lambda)) + Ridge", "mixed-reg",
             lambda: _pipe(_log_prep(lambda x: np.log(x + 1)), lm.Ridge()), expect="unsupported"),
        Case("tumours-passthrough-hgb", "pipeline",
             "ColumnTransformer(OneHotEncoder, remainder='passthrough') + HGB(20)", "tumours", _passthrough_hgb),
        Case("mixed-selector-logreg", "pipeline", "ColumnTransformer(make_column_selector) + LogisticRegression",
             "mixed", lambda: _pipe(_selected_prep(), lm.LogisticRegression(max_iter=1000))),
        Case("mixed-set-output", "pipeline", "set_output(transform='pandas') pipeline + LogisticRegression", "mixed",
             lambda: _pipe(_encoded_prep(OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                           lm.LogisticRegression(max_iter=1000)).set_output(transform="pandas")),
        Case("mixed-lightgbm", "boosting", "ColumnTransformer + LGBMClassifier(20)", "mixed", _lightgbm, "lightgbm"),
        Case("diabetes-xgboost", "boosting", "XGBRegressor(20)", "diabetes", _xgboost, "xgboost"),
        Case("wine-xgboost", "boosting", "XGBClassifier(20)", "wine-df", _xgboost_classifier, "xgboost"),
        Case("diabetes-lightgbm", "boosting", "LGBMRegressor(20)", "diabetes-df", _lightgbm_regressor, "lightgbm"),
    ]
    return rows


def _imputer() -> Any:
    from sklearn.impute import SimpleImputer

    return SimpleImputer(strategy="median")


def _lightgbm() -> Any:
    from lightgbm import LGBMClassifier
    from sklearn.pipeline import Pipeline

    return Pipeline([("prep", _mixed_prep()),
                     ("model", LGBMClassifier(n_estimators=20, num_leaves=15, random_state=0, verbose=-1))])


def _xgboost() -> Any:
    from xgboost import XGBRegressor

    return XGBRegressor(n_estimators=20, max_depth=4, random_state=0)


def _xgboost_classifier() -> Any:
    from xgboost import XGBClassifier

    return XGBClassifier(n_estimators=20, max_depth=3, random_state=0)


def _lightgbm_regressor() -> Any:
    from lightgbm import LGBMRegressor

    return LGBMRegressor(n_estimators=20, num_leaves=15, random_state=0, verbose=-1)
