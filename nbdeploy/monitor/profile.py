"""Reference profiles: a small, JSON-serialisable summary of training data for drift checks.

A profile is stored in ``model.json`` beside each version, so it must be strict JSON
(``json.dumps(profile, allow_nan=False)`` works): missing statistics are ``None``, never NaN,
and the open outer PSI bins (-inf, first edge) and [last edge, +inf) are implicit.

Shape::

    {"version": 1, "n_rows": 150, "features": ["x0", ...],
     "params": {"bins": 10, "max_categories": 50, "sample_size": 5000, "seed": 0},
     "columns": {
        "x0": {"kind": "numeric", "dtype": "float64", "count": 150, "missing_rate": 0.0,
               "min": .., "max": .., "mean": .., "std": ..,
               "bin_edges": [inner quantile edges], "bin_proportions": [len(bin_edges) + 1],
               "sample": [up to sample_size values]},
        "colour": {"kind": "categorical", "dtype": "str", "count": 150, "missing_rate": 0.0,
                   "n_categories": 3, "truncated": false, "singletons": 0,
                   "counts": {"red": 50, ...}, "frequencies": {"red": 0.33, ...}}}}

Bins are ``[edge_i, edge_i+1)``: a value goes to bin ``searchsorted(bin_edges, v, "right")``.
Categories beyond the ``max_categories`` most frequent are pooled as ``"__other__"``.
Non-finite numbers (inf) are treated as missing.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nbdeploy.errors import InvalidInput
from nbdeploy.store.labels import label_key

OTHER = "__other__"
PROFILE_VERSION = 1


def as_frame(X: Any, features: Sequence[str] | None = None) -> pd.DataFrame:
    """Tabular input as a DataFrame with string column names.

    Accepts a DataFrame, a list of dicts (records), a mapping of columns, or a 2-D array.
    Arrays are positional: columns are named ``features`` when given (the profile's order),
    else ``x0..x{n-1}``.
    """
    if isinstance(X, pd.DataFrame):
        frame = X
    elif isinstance(X, Mapping):
        frame = pd.DataFrame({k: one_dimensional(v) for k, v in X.items()})
    elif isinstance(X, Sequence) and not isinstance(X, str) and (len(X) == 0 or isinstance(X[0], Mapping)):
        frame = pd.DataFrame.from_records(list(X)) if len(X) else pd.DataFrame()
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise InvalidInput(f"expected 2-D data (rows x features), got {arr.ndim}-D")
        if features is not None and len(features) != arr.shape[1]:
            raise InvalidInput(f"data has {arr.shape[1]} columns but the profile has {len(features)} features")
        names = list(features) if features is not None else [f"x{i}" for i in range(arr.shape[1])]
        frame = pd.DataFrame({n: arr[:, i] for i, n in enumerate(names)})
    frame = frame.copy(deep=False)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def one_dimensional(values: Any) -> np.ndarray | pd.Series:
    """A 1-D column from a list, array, Series or ``(n, 1)`` array (as ONNX outputs labels)."""
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InvalidInput(f"expected a 1-D array of predictions, got shape {arr.shape}")
    return arr


def is_numeric(series: pd.Series) -> bool:
    """True for int/float columns (bool is categorical); object columns holding only numbers."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return False
    if pd.api.types.is_numeric_dtype(dtype):
        return True
    if pd.api.types.is_object_dtype(dtype):
        values = series.dropna()
        return len(values) > 0 and all(
            isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in values
        )
    return False


def numeric_values(series: pd.Series) -> np.ndarray:
    """Float values with NaN for anything missing, non-numeric or non-finite."""
    coerced = pd.to_numeric(series, errors="coerce")
    values = np.array(pd.Series(coerced).to_numpy(dtype="float64", na_value=np.nan))
    values[~np.isfinite(values)] = np.nan
    return values


def category_keys(series: pd.Series) -> list[str | None]:
    """Category keys per row; ``None`` for a missing value (None, NaN, pd.NA)."""
    return [None if _is_missing(v) else label_key(v) for v in series.tolist()]


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, numbers.Real) and value != value  # NaN of any float type


def _numeric_profile(series: pd.Series, bins: int, sample_size: int, seed: int) -> dict:
    values = numeric_values(series)
    valid = values[~np.isnan(values)]
    n = len(values)
    out: dict[str, Any] = {
        "kind": "numeric",
        "dtype": str(series.dtype),
        "count": n,
        "missing_rate": (n - len(valid)) / n if n else 0.0,
        "min": None,
        "max": None,
        "mean": None,
        "std": None,
        "bin_edges": [],
        "bin_proportions": [1.0],
        "sample": [],
    }
    if len(valid) == 0:
        return out
    quantiles = np.quantile(valid, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(quantiles)
    counts = np.bincount(np.searchsorted(edges, valid, side="right"), minlength=len(edges) + 1)
    rng = np.random.default_rng(seed)
    sample = valid if len(valid) <= sample_size else rng.choice(valid, sample_size, replace=False)
    out.update(
        min=float(valid.min()),
        max=float(valid.max()),
        mean=float(valid.mean()),
        std=float(valid.std(ddof=1)) if len(valid) > 1 else 0.0,
        bin_edges=[float(e) for e in edges],
        bin_proportions=[float(c) for c in counts / len(valid)],
        sample=[float(v) for v in sample],
    )
    return out


def _categorical_profile(series: pd.Series, max_categories: int) -> dict:
    keys = [k for k in category_keys(series) if k is not None]
    n = len(series)
    counts = pd.Series(keys, dtype=object).value_counts()
    # Deterministic order: most frequent first, ties by key.
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict((k, int(c)) for k, c in ordered[:max_categories])
    other = int(sum(c for _, c in ordered[max_categories:]))
    if other:
        kept[OTHER] = other
    total = len(keys)
    return {
        "kind": "categorical",
        "dtype": str(series.dtype),
        "count": n,
        "missing_rate": (n - total) / n if n else 0.0,
        "n_categories": len(ordered),
        "truncated": bool(other),
        "singletons": int(sum(1 for _, c in ordered if c == 1)),
        "counts": kept,
        "frequencies": {k: c / total for k, c in kept.items()},
    }


def profile_column(
    series: pd.Series,
    *,
    bins: int = 10,
    max_categories: int = 50,
    sample_size: int = 5000,
    seed: int = 0,
    kind: str | None = None,
) -> dict:
    """Profile one column; ``kind`` ("numeric"/"categorical") overrides the dtype-based guess."""
    kind = kind or ("numeric" if is_numeric(series) else "categorical")
    if kind == "numeric":
        return _numeric_profile(series, bins, sample_size, seed)
    if kind == "categorical":
        return _categorical_profile(series, max_categories)
    raise InvalidInput(f"unknown kind {kind!r}: expected 'numeric' or 'categorical'")


def _check_params(bins: int, max_categories: int, sample_size: int) -> None:
    if bins < 1 or max_categories < 1 or sample_size < 1:
        raise InvalidInput("bins, max_categories and sample_size must be at least 1")


def reference_profile(
    X: Any, *, bins: int = 10, max_categories: int = 50, sample_size: int = 5000, seed: int = 0
) -> dict:
    """Summarise training data per feature (see the module docstring for the shape).

    ``X`` is a DataFrame, a list of dicts, or a 2-D array (features named ``x0..x{n-1}``).
    Numeric columns keep quantile bins for PSI and a seeded sample for the KS test;
    string/object/category/bool columns keep category counts.
    """
    _check_params(bins, max_categories, sample_size)
    frame = as_frame(X)
    params = {"bins": bins, "max_categories": max_categories, "sample_size": sample_size, "seed": seed}
    columns = {
        name: profile_column(frame[name], bins=bins, max_categories=max_categories, sample_size=sample_size, seed=seed)
        for name in frame.columns
    }
    return {
        "version": PROFILE_VERSION,
        "n_rows": len(frame),
        "features": list(frame.columns),
        "params": params,
        "columns": columns,
    }
