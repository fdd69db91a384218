"""Data for the coverage matrix: scikit-learn's bundled datasets and generated frames.

Bundled (no download): iris, wine, breast cancer, diabetes, digits. Generated: frames with the column
types notebooks hold (floats with NaN, ints, strings with missing values, pandas categories, nullable
ints and booleans, bools, free text); ``mixed-cat`` is the ``mixed`` frame with its text columns as
pandas categories, what HistGradientBoosting splits on natively, ``mixed-numbers`` its columns that
are not text; a ``-reg`` suffix asks for the numeric target. Every split is fixed, so the matrix gives
the same rows each run.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

Split = tuple[Any, Any, Any, Any]  # X_train, X_test, y_train, y_test


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


def _generated(name: str) -> Split:
    from sklearn.model_selection import train_test_split

    if name == "tumours":
        X, y = tumours()
    elif name == "reviews":
        X, y = reviews()
    else:
        X, y_class, y_value = mixed_frame()
        y = y_value if name.endswith("-reg") else y_class
        if name.startswith("mixed-cat"):  # the text columns as pandas categories (missing values kept)
            X = X.astype({"city": "category", "plan": "category"})
        elif name == "mixed-numbers":  # floats with NaN, ints, bools, nullable Int64 and boolean with pd.NA
            X = X[["age", "income", "visits", "active", "referrals", "newsletter"]]
    stratify = y if name == "tumours" else None
    return tuple(train_test_split(X, y, test_size=0.3, random_state=0, stratify=stratify))  # type: ignore[return-value]
