"""The coverage matrix: estimators and pipelines nbdeploy deploys, on data scikit-learn ships.

Every case is small (a few hundred rows, 20 trees) so the whole matrix runs through a real server
in about a minute. Datasets: scikit-learn's bundled iris, wine, breast cancer, diabetes and digits
(no download), and generated frames with the column types notebooks hold (floats with NaN, ints,
strings with missing values, pandas categories, nullable ints and booleans, bools, free text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

Split = tuple[Any, Any, Any, Any]  # X_train, X_test, y_train, y_test


@dataclass(frozen=True)
class Case:
    name: str  # also the model name in the store
    family: str
    model: str  # what the row shows
    dataset: str
    build: Callable[[], Any]
    requires: str | None = None  # optional library (lightgbm, xgboost)
    expect: str = "passed"  # or "refused": the fidelity gate must stop it


@cache
def dataset(name: str) -> Split:
    """A fixed train/test split of one named dataset."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name.startswith("mixed") or name in ("reviews", "tumours"):
        return _generated(name)
    frame = name.endswith("-df")
    base = name.removesuffix("-df").removesuffix("-nan")
    loader = {"iris": datasets.load_iris, "wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer,
              "diabetes": datasets.load_diabetes, "digits": datasets.load_digits}[base]
    X, y = loader(return_X_y=True, as_frame=frame)
    if base == "digits":
        X, y = X[:600], y[:600]
    if name.endswith("-nan"):  # a DataFrame with 15 % of its values missing
        X, y = loader(return_X_y=True, as_frame=True)
        X = X.mask(np.random.default_rng(3).random(X.shape) < 0.15)
    stratify = None if base == "diabetes" else y
    return tuple(train_test_split(X, y, test_size=0.3, random_state=0, stratify=stratify))  # type: ignore[return-value]


def mixed_frame(n: int = 600, seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """Customers: floats with NaN, an int, two string categoricals with missing values, a bool, a category,
    a nullable Int64 and a nullable boolean. Returns the frame, a class target and a numeric target."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, n).round(0)
    age[rng.random(n) < 0.1] = np.nan
    income = rng.lognormal(10, 0.5, n)
    city = rng.choice(["paris", "lyon", "nice", "lille", "brest"], n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    plan = rng.choice(["free", "pro", "team"], n)
    active = rng.random(n) < 0.5
    visits = rng.poisson(3, n)
    frame = pd.DataFrame({
        "age": age,
        "income": income,
        "visits": visits,
        "city": pd.array(city, dtype="str"),
        "plan": pd.array(plan, dtype="str"),
        "active": active,
        "tier": pd.Categorical(rng.choice(["bronze", "silver", "gold"], n), categories=["bronze", "silver", "gold"]),
        "referrals": pd.array(rng.integers(0, 5, n), dtype="Int64"),
        "newsletter": pd.array(rng.random(n) < 0.3, dtype="boolean"),
    })
    frame.loc[rng.random(n) < 0.08, "city"] = None
    frame.loc[rng.random(n) < 0.05, "plan"] = None
    frame.loc[rng.random(n) < 0.05, "referrals"] = pd.NA
    frame.loc[rng.random(n) < 0.05, "newsletter"] = pd.NA
    score = (0.04 * (np.nan_to_num(age, nan=40) - 40) + 0.8 * (plan == "pro") - 0.7 * (city == "nice")
             + 0.6 * active + 0.1 * visits + rng.normal(0, 0.8, n))
    return frame, (score > 0.3).astype(int), np.round(50 + 10 * score, 2)


_WORDS = {1: "great excellent love perfect fast friendly", 0: "awful slow broken rude refund terrible"}


def reviews(n: int = 400, seed: int = 1) -> tuple[Any, np.ndarray]:
    """Short product reviews (text), a star count and a category; target: positive or not."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    filler = ["the", "product", "arrived", "on", "time", "and", "works", "as", "described"]
    texts = []
    for label in y:
        own = _WORDS[label].split() if rng.random() < 0.85 else _WORDS[1 - label].split()
        words = list(rng.choice(own, 2)) + list(rng.choice(filler, 5))
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + ".")
    frame = pd.DataFrame({"review": pd.array(texts, dtype="str"), "stars": np.clip(y * 2 + rng.integers(1, 4, n), 1, 5),
                          "category": pd.array(rng.choice(["books", "toys", "garden"], n), dtype="str")})
    return frame, y


def tumours(seed: int = 0) -> tuple[Any, Any]:
    """Breast-cancer measurements with 15 % missing, two string categoricals (one with missing values)
    and a bool: the imputer-before-trees case whose float32 conversion is off by ~0.03."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    rng = np.random.default_rng(seed)
    X = data.data[list(TUMOUR_NUMBERS)].copy()
    X = X.mask(rng.random(X.shape) < 0.15)
    n = len(X)
    X["clinic"] = pd.array(rng.choice(["north", "south", "east"], n), dtype="str")
    X["scanner"] = pd.array(rng.choice(["a1", "b2"], n), dtype="str")
    X.loc[rng.random(n) < 0.05, "clinic"] = None
    X["follow_up"] = rng.random(n) < 0.4
    return X, data.target


TUMOUR_NUMBERS = ("mean radius", "mean texture", "worst area", "mean smoothness")


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


def _generated(name: str) -> Split:
    from sklearn.model_selection import train_test_split

    if name == "tumours":
        X, y = tumours()
    elif name == "reviews":
        X, y = reviews()
    else:
        X, y_class, y_value = mixed_frame()
        y = y_value if name == "mixed-reg" else y_class
    stratify = y if name == "tumours" else None
    return tuple(train_test_split(X, y, test_size=0.3, random_state=0, stratify=stratify))  # type: ignore[return-value]


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


def _pipe(*steps: Any) -> Any:
    from sklearn.pipeline import make_pipeline

    return make_pipeline(*steps)


def cases() -> list[Case]:
    """The matrix rows, in the order the docs show them."""
    from sklearn import calibration, cluster, ensemble, linear_model, naive_bayes, neighbors, neural_network, svm, tree
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, PolynomialFeatures, StandardScaler

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
        Case("cancer-extra-trees", "forest", "ExtraTreesClassifier(20)", "breast_cancer",
             lambda: e.ExtraTreesClassifier(n_estimators=20, random_state=0)),
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
        Case("wine-svc", "svm", "StandardScaler + SVC (labels only)", "wine-df",
             lambda: _pipe(StandardScaler(), svm.SVC())),
        Case("cancer-linear-svc", "svm", "StandardScaler + LinearSVC (labels only)", "breast_cancer",
             lambda: _pipe(StandardScaler(), svm.LinearSVC())),
        Case("diabetes-svr", "svm", "StandardScaler + SVR", "diabetes", lambda: _pipe(StandardScaler(), svm.SVR(C=50))),
        Case("iris-knn", "k-NN", "KNeighborsClassifier", "iris-df", lambda: neighbors.KNeighborsClassifier()),
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
                                                                         method="isotonic", cv=3), expect="refused"),
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
