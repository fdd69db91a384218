"""Data drift: compare current inputs (or predictions) with a reference profile.

Per feature we compute PSI over the reference bins/categories and a two-sample test
(Kolmogorov-Smirnov for numeric features against the profile's sample, chi-square on the
reference-vs-current contingency table for categorical ones), plus data-quality checks.

The rule follows the field's defaults (PSI < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant;
tests at p < 0.05), and a flag needs a change that is both *material* and *significant*: PSI
alone is noisy on small samples (about ``(bins - 1) * (1/n_ref + 1/n_cur)`` with no drift, ~0.27
for 50 rows and 10 bins) and a test alone flags trivial shifts on big ones. p-values of one
report are adjusted together with Benjamini-Hochberg (``scipy.stats.false_discovery_control``),
so a 30-feature table does not raise false alarms just by having many features.

* ALERT  ``p < p_value`` and ``PSI > psi_alert``                      (distribution shift)
* ALERT  every current value missing while the reference had values
* WARN   ``p < p_value`` and ``PSI > psi_warn``
* WARN   missing rate moved by more than ``missing_rate_delta`` (and Fisher exact p < p_value)
* WARN   more than ``out_of_range_rate`` of values outside the reference [min, max], and more
         than an exchangeable sample would put there (hypergeometric tail p < p_value)
* WARN   more than ``unseen_rate`` of values in categories the reference lacks, and more than
         its rate of new categories suggests (binomial test against Good-Turing
         ``(singletons + 1) / (n_ref + 1)``). Profiles that pooled rare categories into
         ``__other__`` count unseen values but leave them to PSI/chi-square.
* Fewer than ``min_samples`` current rows (or non-missing values, for the distribution and
  range checks): no flag; with too few rows the reason is "not enough data".

PSI uses epsilon smoothing: proportions are clipped to at least ``PSI_EPSILON`` (1e-4, as
Evidently does) so empty bins give a large but finite contribution.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from nbdeploy.display.drift import drift_report_html
from nbdeploy.errors import InvalidInput
from nbdeploy.monitor.profile import (
    OTHER,
    as_frame,
    category_keys,
    numeric_values,
)

LEVELS = ("OK", "WARN", "ALERT")
PSI_EPSILON = 1e-4


def worst(*levels: str) -> str:
    """The most severe of some "OK"/"WARN"/"ALERT" levels ("OK" when none)."""
    return max(levels, key=LEVELS.index, default="OK")


@dataclass
class DriftThresholds:
    """When a feature counts as drifted; see the module docstring for the rule."""

    psi_warn: float = 0.1
    psi_alert: float = 0.2
    p_value: float = 0.05
    missing_rate_delta: float = 0.1
    out_of_range_rate: float = 0.01
    unseen_rate: float = 0.01
    min_samples: int = 30


@dataclass
class FeatureDrift:
    """Drift of one feature. Rates are over non-missing current values; None when undefined."""

    feature: str
    kind: str
    n: int
    psi: float | None = None
    test: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    p_value_adjusted: float | None = None
    missing_rate_ref: float = 0.0
    missing_rate_cur: float | None = None
    out_of_range_count: int | None = None
    out_of_range_rate: float | None = None
    unseen_count: int | None = None
    unseen_rate: float | None = None
    status: str = "OK"
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DriftReport:
    """Per-feature drift rows, in profile order, and the overall level."""

    rows: list[FeatureDrift]
    n: int
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    @property
    def overall(self) -> str:
        return worst(*(r.status for r in self.rows))

    @property
    def drifted_features(self) -> list[str]:
        """Features whose status is WARN or ALERT."""
        return [r.feature for r in self.rows if r.status != "OK"]

    def __getitem__(self, feature: str) -> FeatureDrift:
        for row in self.rows:
            if row.feature == feature:
                return row
        raise KeyError(feature)

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "n": self.n,
            "drifted_features": self.drifted_features,
            "thresholds": asdict(self.thresholds),
            "features": [r.to_dict() for r in self.rows],
        }

    def _repr_html_(self) -> str:
        return drift_report_html(self.to_dict())


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def psi(expected: Any, actual: Any, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=float), epsilon, None)
    a = np.clip(np.asarray(actual, dtype=float), epsilon, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class _Checks:
    """p-values of the checks run on one feature, by name; adjusted before judging."""

    n_valid: int
    p: dict[str, float] = field(default_factory=dict)


def _numeric(row: FeatureDrift, ref: dict, series: pd.Series, th: DriftThresholds) -> _Checks:
    values = numeric_values(series)
    valid = values[~np.isnan(values)]
    checks = _Checks(n_valid=len(valid))
    sample = np.asarray(ref["sample"], dtype=float)
    if len(valid):
        edges = np.asarray(ref["bin_edges"], dtype=float)
        counts = np.bincount(np.searchsorted(edges, valid, side="right"), minlength=len(edges) + 1)
        row.psi = psi(ref["bin_proportions"], counts / len(valid))
    if len(valid) and len(sample):
        with warnings.catch_warnings():  # exact p-value may fall back to asymptotic
            warnings.filterwarnings("ignore", "ks_2samp: Exact calculation", RuntimeWarning)
            result = stats.ks_2samp(sample, valid)
        row.test, row.statistic, row.p_value = "ks", float(result.statistic), float(result.pvalue)
        checks.p["distribution"] = row.p_value
    if len(valid) and ref["min"] is not None:
        low = int(np.count_nonzero(valid < ref["min"]))
        high = int(np.count_nonzero(valid > ref["max"]))
        row.out_of_range_count = low + high
        row.out_of_range_rate = (low + high) / len(valid)
        if row.out_of_range_rate > th.out_of_range_rate:
            # Exchangeable null: P(k current values beyond the reference extreme) is the
            # chance that the top k of the pooled sample are all current ones.
            pooled = round(ref["count"] * (1 - ref["missing_rate"])) + len(valid)
            tail = min(stats.hypergeom.pmf(k, pooled, len(valid), k) for k in (low, high))
            checks.p["range"] = float(min(1.0, 2 * tail))
    return checks


def _categorical(row: FeatureDrift, ref: dict, series: pd.Series, th: DriftThresholds) -> _Checks:
    keys = [k for k in category_keys(series) if k is not None]
    checks = _Checks(n_valid=len(keys))
    ref_counts: dict[str, int] = ref["counts"]
    current = Counter(keys)
    unseen = sum(c for k, c in current.items() if k not in ref_counts or k == OTHER)
    buckets = [k for k in ref_counts if k != OTHER]
    refs = [ref_counts[k] for k in buckets] + [ref_counts.get(OTHER, 0)]
    cur = [current.get(k, 0) for k in buckets] + [unseen]  # pooled with the rare tail, or new
    table = np.array([refs, cur])
    table = table[:, table.sum(axis=0) > 0]
    if keys and table[0].sum() > 0:
        row.psi = psi(table[0] / table[0].sum(), table[1] / table[1].sum())
        row.test = "chi2"
        if table.shape[1] < 2:
            row.statistic, row.p_value = 0.0, 1.0
        else:
            result = stats.chi2_contingency(table)
            row.statistic, row.p_value = float(result.statistic), float(result.pvalue)
        checks.p["distribution"] = row.p_value
    if keys:
        row.unseen_count, row.unseen_rate = unseen, unseen / len(keys)
        if row.unseen_rate > th.unseen_rate and not ref.get("truncated"):
            # Good-Turing: the reference's chance of a new category is ~ singletons / n.
            p0 = (ref.get("singletons", 0) + 1) / (sum(ref_counts.values()) + 1)
            test = stats.binomtest(unseen, len(keys), min(p0, 1.0), alternative="greater")
            checks.p["unseen"] = float(test.pvalue)
    return checks


def _measure(name: str, ref: dict, series: pd.Series, th: DriftThresholds) -> tuple[FeatureDrift, _Checks]:
    n = len(series)
    row = FeatureDrift(feature=name, kind=ref["kind"], n=n, missing_rate_ref=ref["missing_rate"])
    if ref["kind"] == "numeric":
        checks = _numeric(row, ref, series, th)
    elif ref["kind"] == "categorical":
        checks = _categorical(row, ref, series, th)
    else:
        raise InvalidInput(f"feature {name!r} has unknown kind {ref['kind']!r} in the profile")
    row.missing_rate_cur = (n - checks.n_valid) / n if n else None
    if row.missing_rate_cur is not None and (abs(row.missing_rate_cur - row.missing_rate_ref) > th.missing_rate_delta):
        ref_missing = round(ref["count"] * ref["missing_rate"])
        table = [[ref_missing, ref["count"] - ref_missing], [n - checks.n_valid, checks.n_valid]]
        checks.p["missing"] = float(stats.fisher_exact(table).pvalue)
    return row, checks


def _adjust(checks: list[_Checks]) -> None:
    """Benjamini-Hochberg over every p-value in the report (many features, many tests)."""
    cells = [(c, key) for c in checks for key in c.p]
    if cells:
        adjusted = stats.false_discovery_control([c.p[key] for c, key in cells])
        for (c, key), value in zip(cells, adjusted, strict=True):
            c.p[key] = float(value)


def _judge(row: FeatureDrift, ref: dict, checks: _Checks, th: DriftThresholds) -> None:
    row.p_value_adjusted = checks.p.get("distribution")
    if row.n < th.min_samples:
        row.reasons.append(f"not enough data (n={row.n} < {th.min_samples})")
        return
    significant = {key for key, p in checks.p.items() if p < th.p_value}
    levels: list[str] = []
    if checks.n_valid == 0 and ref["missing_rate"] < 1:
        levels.append("ALERT")
        row.reasons.append("all values missing")
    elif "missing" in significant:
        levels.append("WARN")
        row.reasons.append(f"missing rate {_pct(row.missing_rate_ref)} → {_pct(row.missing_rate_cur)}")
    if checks.n_valid >= th.min_samples:
        if "distribution" in significant and row.psi is not None and row.psi > th.psi_warn:
            levels.append("ALERT" if row.psi > th.psi_alert else "WARN")
            row.reasons.append(f"distribution shift: PSI {row.psi:.3g}, {row.test} p={row.p_value:.2g}")
        if "range" in significant:
            levels.append("WARN")
            row.reasons.append(
                f"{_pct(row.out_of_range_rate)} out of reference range [{ref['min']:.4g}, {ref['max']:.4g}]"
            )
        if "unseen" in significant:
            levels.append("WARN")
            row.reasons.append(f"{_pct(row.unseen_rate)} unseen categories")
    row.status = worst(*levels)


def feature_drift(profile: dict, X_current: Any, thresholds: DriftThresholds | None = None) -> DriftReport:
    """Drift of every profiled feature in ``X_current`` (DataFrame, records or 2-D array).

    Columns are matched by name (arrays by position, in profile order); a profiled column
    absent from the current data counts as all missing; extra columns are ignored.
    """
    th = thresholds or DriftThresholds()
    features: list[str] = list(profile["features"])
    frame = as_frame(X_current, features=features)
    measured = []
    for name in features:
        series = frame[name] if name in frame.columns else pd.Series([None] * len(frame), dtype=object)
        measured.append(_measure(name, profile["columns"][name], series, th))
    _adjust([checks for _, checks in measured])
    for row, checks in measured:
        _judge(row, profile["columns"][row.feature], checks, th)
    return DriftReport(rows=[row for row, _ in measured], n=len(frame), thresholds=th)
