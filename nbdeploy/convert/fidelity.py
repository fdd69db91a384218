"""Does the ONNX model predict what the scikit-learn model predicts? Measured, not assumed.

The gate: labels agree on at least ``min_agreement`` of the rows and probabilities differ by at
most ``max_diff`` (regression: predicted values differ by at most ``max_diff`` relative to
``max(|y|, 1)``). :func:`gated_conversion` tries single precision, then double precision, and keeps
the first conversion that passes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from nbdeploy.convert.conversion import Converted, has_probabilities, to_onnx
from nbdeploy.convert.strict import with_known_categories
from nbdeploy.errors import ConversionError
from nbdeploy.serve.probe import nan_refusing_inputs
from nbdeploy.serve.sessions import ort_session, session_runner
from nbdeploy.signature import Signature, from_sample

MIN_AGREEMENT = 0.999
MAX_DIFF = 1e-4
MAX_PROBA_DIFF = MAX_DIFF  # the names earlier versions used
MAX_RELATIVE_DIFF = MAX_DIFF
PRECISIONS = ("FP32", "FP64")
WORST_ROWS = 5


@dataclass
class FidelityReport:
    """Label agreement and worst numeric difference between scikit-learn and ONNX Runtime."""

    task: str
    n: int
    precision: str  # FP32 | FP64: the float type the served graph computes in
    agreement: float | None  # share of equal labels (classification, clustering)
    max_abs_diff: float  # probabilities (classification) or predicted values (regression)
    max_rel_diff: float | None  # regression only
    disagreeing_rows: list[int] = field(default_factory=list)  # positions, first 20
    passed: bool = True
    thresholds: dict[str, float] = field(default_factory=dict)
    n_disagreeing: int = 0
    worst_rows: list[dict[str, Any]] = field(default_factory=list)  # row label, sklearn, onnx, diff
    note: str = ""  # how the precision was chosen
    attempts: list[str] = field(default_factory=list)  # one summary per precision tried
    forced: bool = False
    onnx_bytes: int = 0
    convert_seconds: float = 0.0
    latency: dict[str, float] = field(default_factory=dict)  # seconds per call, medians

    def figures(self) -> str:
        if self.task == "regression":
            return f"max |diff| {self.max_abs_diff:.2g}, max relative diff {(self.max_rel_diff or 0.0):.2g}"
        text = f"labels agree on {(self.agreement or 0.0):.2%} of {self.n} rows"
        return text + (f", max probability diff {self.max_abs_diff:.2g}" if "max_proba_diff" in self.thresholds else "")

    def summary(self) -> str:
        verdict = "passed" if self.passed else ("FAILED, deployed with force" if self.forced else "FAILED")
        return f"{verdict} ({self.precision}): {self.figures()}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self) -> str:
        """Why a conversion was refused and what the user can do, for the error message."""
        lines = [f"the ONNX model does not predict what the scikit-learn model predicts on {self.n} held-out rows "
                 f"({self.n_disagreeing} rows differ beyond the gate)."]
        lines += [f"  {a}" for a in self.attempts]
        if self.worst_rows:
            lines.append("Worst rows (row: scikit-learn vs ONNX Runtime):")
            lines += [f"  {r['row']}: {r['sklearn']} vs {r['onnx']}{_what_differs(r, self.task)}"
                      for r in self.worst_rows]
        gate = ", ".join(f"{k}={v:g}" for k, v in self.thresholds.items())
        lines.append(f"What you can do: check these rows for values the model never saw in training; relax the gate "
                     f"if these differences are acceptable (now {gate}); or deploy anyway with force=True "
                     "(--force), which records these figures with the version.")
        return "\n".join(lines)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from nbdeploy.display.conversion import conversion_bundle

        return conversion_bundle(self.to_dict())


class FidelityRefused(ConversionError):
    """No conversion passed the fidelity gate; ``report`` holds the figures of the best one."""

    def __init__(self, report: FidelityReport) -> None:
        super().__init__(report.explain())
        self.report = report


def onnx_predictions(session: Any, signature: Signature, X: Any) -> dict[str, np.ndarray]:
    """Run an in-process ONNX Runtime session on user data, through the checks the server applies."""
    run = session_runner(session)
    return run(signature.feeds(signature.encode(X), no_nan=nan_refusing_inputs(signature, run)))


def check(model: Any, session: Any, signature: Signature, task: str, X: Any, precision: str,
          min_agreement: float = MIN_AGREEMENT, max_diff: float = MAX_DIFF,
          max_rel: float | None = None) -> FidelityReport:
    """Compare ``model`` (scikit-learn) with ``session`` (ONNX Runtime) on ``X``."""
    got = onnx_predictions(session, signature, X)
    labels = list(getattr(X, "index", range(len(got["label"]))))
    want = np.asarray(model.predict(X))
    have = got["label"]
    if want.shape[0] != have.shape[0] or (task != "regression" and want.ndim != 1):
        raise ConversionError(f"the ONNX model answers with shape {list(have.shape)} where scikit-learn answers "
                              f"{list(want.shape)}; multi-output models are not supported")
    if task == "regression":
        return _regression(want, have, labels, precision, max_diff if max_rel is None else max_rel)
    proba = None
    if task == "classification" and "probabilities" in got and hasattr(model, "predict_proba"):
        proba = (np.asarray(model.predict_proba(X), dtype=np.float64), got["probabilities"].astype(np.float64))
    return _labels(task, want, have, proba, labels, precision, min_agreement, max_diff)


def _regression(want: np.ndarray, have: np.ndarray, labels: list[Any], precision: str,
                limit: float) -> FidelityReport:
    w, h = want.astype(np.float64).ravel(), have.astype(np.float64).ravel()
    diff = np.abs(w - h)
    rel = diff / np.maximum(np.abs(w), 1.0)
    bad = np.flatnonzero(~(rel <= limit))  # NaN counts as bad
    worst = np.argsort(-np.nan_to_num(rel, nan=np.inf))[:WORST_ROWS]
    rows = [_row(labels[i], float(w[i]), float(h[i]), float(rel[i])) for i in worst if not rel[i] <= limit * 1e-2]
    return FidelityReport("regression", len(w), precision, None, _max(diff), _max(rel), bad[:20].tolist(),
                          len(bad) == 0, {"max_rel_diff": limit}, len(bad), rows)


def _labels(task: str, want: np.ndarray, have: np.ndarray, proba: tuple[np.ndarray, np.ndarray] | None,
            labels: list[Any], precision: str, min_agreement: float, max_diff: float) -> FidelityReport:
    """Classification and clustering: equal labels, and for classifiers equal probabilities."""
    n = len(want)
    same = _labels_equal(want, have)
    agreement = float(same.mean()) if n else 1.0
    per_row = np.abs(proba[0] - proba[1]).max(axis=1, initial=0.0) if proba is not None else np.zeros(n)
    row_diff = np.where(same, per_row, np.inf)  # a differing label is the worst a row can do
    bad = np.flatnonzero(~(row_diff <= max_diff))
    max_abs = _max(per_row)
    rows = []
    for i in np.argsort(-np.nan_to_num(row_diff, nan=np.inf))[:WORST_ROWS]:
        if row_diff[i] <= max_diff * 1e-2:
            break
        a, b = _item(want[i]), _item(have[i])
        if proba is not None:
            a, b = f"{a} (p={proba[0][i].max():.4g})", f"{b} (p={proba[1][i].max():.4g})"
        rows.append({**_row(labels[i], a, b, float(per_row[i])), "labels_differ": not bool(same[i])})
    thresholds = {"min_agreement": min_agreement}
    if proba is not None:
        thresholds["max_proba_diff"] = max_diff
    return FidelityReport(task, n, precision, agreement, max_abs, None, bad[:20].tolist(),
                          agreement >= min_agreement and max_abs <= max_diff, thresholds, len(bad), rows)


def gated_conversion(model: Any, sample: Any, X_check: Any, *, min_agreement: float = MIN_AGREEMENT,
                     max_diff: float = MAX_DIFF, force: bool = False,
                     measure_latency: bool = True) -> tuple[Converted, FidelityReport]:
    """Convert in single precision; use double when only double passes; refuse when neither does.

    Raises :class:`FidelityRefused` (before anything is stored) when no conversion passes the gate,
    unless ``force``: then the best conversion is returned with ``report.forced`` set.
    """
    signature = from_sample(sample)
    tried: list[tuple[Converted, FidelityReport, Any]] = []
    errors: list[str] = []
    for precision in PRECISIONS:
        try:
            converted = to_onnx(model, signature, precision)
            # inputs whose encoder refuses unknown categories: known values for the probes, a 4xx for others
            converted = replace(converted, signature=with_known_categories(model, converted.signature))
        except ConversionError as exc:
            if not tried:
                raise
            errors.append(f"not convertible in {precision}: {exc.message}")
            break
        # the server's own session settings: sums add up in the same order, so near-ties break alike
        session = ort_session(converted.onnx_bytes)
        report = check(model, session, converted.signature, converted.task, X_check, precision,
                       min_agreement, max_diff)
        tried.append((converted, report, session))
        if report.passed:
            break
    converted, report, session = min(tried, key=lambda t: (not t[1].passed, _badness(t[1])))
    report.attempts = [r.summary() for _, r, _ in tried] + errors
    if report.passed and report.precision == "FP64":
        report.note = (f"single precision failed the fidelity gate ({tried[0][1].figures()}); "
                       "double precision passed, so the model is served in double precision")
    elif report.passed:
        report.note = "single precision passed the fidelity gate"
    report.onnx_bytes = len(converted.onnx_bytes)
    report.convert_seconds = sum(c.seconds for c, _, _ in tried)
    if not report.passed:
        if not force:
            raise FidelityRefused(report)
        report.forced = True
        report.note = "no conversion passed the fidelity gate; deployed anyway (force) with these figures"
    if measure_latency:
        report.latency = latency(model, session, converted.signature, X_check, has_probabilities(model))
    return converted, report


def latency(model: Any, session: Any, signature: Signature, X: Any, proba: bool,
            budget: float = 0.15) -> dict[str, float]:
    """Median seconds per call of scikit-learn and ONNX Runtime, for one row and for 1,000 rows."""
    predict = model.predict_proba if proba else model.predict
    out: dict[str, float] = {}
    for rows, repeats in ((1, 200), (1000, 10)):
        batch = _rows(X, rows)
        feeds = signature.feeds(signature.encode(batch))
        out[f"sklearn_{rows}"] = _median_time(lambda b=batch: predict(b), repeats, budget)
        out[f"onnx_{rows}"] = _median_time(lambda f=feeds: session.run(None, f), repeats, budget)
    return out


def _median_time(call: Any, repeats: int, budget: float) -> float:
    call()  # warm up
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _rows(X: Any, n: int) -> Any:
    """``n`` rows of ``X`` (cycling through it), keeping its type."""
    index = np.arange(n) % len(X)
    return X.iloc[index] if hasattr(X, "iloc") else np.asarray(X)[index]


def _badness(report: FidelityReport) -> tuple[float, float]:
    return (-(report.agreement if report.agreement is not None else 1.0),
            report.max_rel_diff if report.max_rel_diff is not None else report.max_abs_diff)


def _max(values: np.ndarray) -> float:
    """The largest difference; a NaN (one side answered NaN) counts as infinitely large."""
    if np.isnan(values).any():
        return float("inf")
    return float(values.max(initial=0.0))


def _what_differs(row: dict[str, Any], task: str) -> str:
    parts = ["labels differ"] if row.get("labels_differ") else []
    if task != "clustering" and row["diff"]:
        parts.append(f"{'relative ' if task == 'regression' else 'probability '}diff {row['diff']:.3g}")
    return f" ({', '.join(parts)})" if parts else ""


def _item(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _row(label: Any, sklearn: Any, onnx: Any, diff: float) -> dict[str, Any]:
    return {"row": _item(label), "sklearn": sklearn, "onnx": onnx, "diff": diff}


def _labels_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":
        return np.array([str(x) == str(y) for x, y in zip(a, b, strict=True)], dtype=bool)
    return a == b
