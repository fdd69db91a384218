"""How closely estimated quality follows realised quality, and what an estimate costs at 1,000,000 predictions.

Scenarios (generated data, fixed seeds; the model is fitted on reference rows, the estimation model on
2,000 held-out reference rows, exactly as registration fits it, then production drifts step by step and
every window of 500 predictions is estimated without labels and compared with its realised figure):

* ``covariate shift``, logistic regression (a calibrated model): the inputs move towards the decision
  boundary, p(y | x) stays: CBPE should track accuracy (target: within 0.03 per window);
* ``concept drift``, the same model: the inputs stay, p(y | x) turns: CBPE cannot see it (the
  calibration no longer holds), the estimate stays put while accuracy falls;
* ``covariate shift``, linear regression with noise that grows with ``x1``: DLE of MAE, as ``x1`` moves
  into the noisy region.

Then ``estimated_quality`` (the monitor's part) over a log of N predictions (default 1,000,000) filled
through the real writer path, median of 7 after a warm-up.

Run: ``.venv/bin/python benchmarks/estimate.py [N]``.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
from sklearn.linear_model import LinearRegression, LogisticRegression

from nbdeploy.lifecycle.estimation import fit_calibration, fit_loss_model
from nbdeploy.monitor.estimate import estimate_accuracy, estimate_mae, estimated_quality
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog
from nbdeploy.store.reader import LogReader

WINDOW, STEPS, PER_STEP = 500, 10, 2
COEF = np.array([4.0, -2.5, 1.5, 0.0])


def classification_rows(rng: np.random.Generator, n: int, mean: np.ndarray, coef: np.ndarray):
    """Inputs around ``mean``, labels drawn from a logistic p(y | x); also p(y = 1 | x) itself."""
    X = rng.normal(mean, 1.0, (n, len(mean)))
    p = 1 / (1 + np.exp(-(X @ coef)))
    return X, (rng.random(n) < p).astype(int), p


Window = tuple[float, float, float, float, float]  # estimated, realised, low, high, expected (noise-free)


def tracking(windows: list[Window]) -> str:
    est, real, low, high, expected = np.array(windows).T
    err, bias = np.abs(est - real), np.abs(est - expected)
    inside = int(((low <= real) & (real <= high)).sum())
    return (f"|est - realised| mean {err.mean():.4f}, max {err.max():.4f}; realised inside the band "
            f"{inside}/{len(windows)}; |est - expected| (no label noise) mean {bias.mean():.4f}, max {bias.max():.4f}")


def classifier_scenario(concept: bool, seed: int = 1) -> list[Window]:
    rng = np.random.default_rng(seed)
    reference = np.array([1.0, -0.5, 0.0, 0.0])
    X, y, _ = classification_rows(rng, 5_000, reference, COEF)
    model = LogisticRegression().fit(X, y)
    X_h, y_h, _ = classification_rows(rng, 2_000, reference, COEF)
    calibration = fit_calibration(model.predict_proba(X_h), y_h, model.classes_.tolist())
    rows = []
    for step in range(STEPS):
        f = step / (STEPS - 1)
        mean = reference if concept else reference * (1 - f)
        coef = COEF * np.array([1.0, 1.0 - 2.5 * f, 1.0, 0.0]) + np.array([0, 0, 0, 2.0 * f]) if concept else COEF
        for _ in range(PER_STEP):
            Xw, yw, pw = classification_rows(rng, WINDOW, mean, coef)
            pred = model.predict(Xw)
            est = estimate_accuracy(model.predict_proba(Xw), calibration)
            expected = float(np.where(pred == 1, pw, 1 - pw).mean())  # the accuracy with no label noise
            rows.append((est["value"], float((pred == yw).mean()), est["low"], est["high"], expected))
    return rows


def regression_rows(rng: np.random.Generator, n: int, shift: float):
    X = np.column_stack([rng.normal(0, 1, n), rng.normal(shift, 1, n)])
    noise = 0.5 + np.abs(X[:, 1])
    return X, 3 * X[:, 0] + rng.normal(0, noise, n), noise


def regressor_scenario(seed: int = 2) -> list[Window]:
    rng = np.random.default_rng(seed)
    X, y, _ = regression_rows(rng, 5_000, 0.0)
    model = LinearRegression().fit(X, y)
    X_h, y_h, _ = regression_rows(rng, 2_000, 0.0)
    loss_model = fit_loss_model({"x0": X_h[:, 0], "x1": X_h[:, 1]}, model.predict(X_h), y_h)
    rows = []
    for step in range(STEPS):
        for _ in range(PER_STEP):
            Xw, yw, noise = regression_rows(rng, WINDOW, 1.5 * step / (STEPS - 1))
            pred = model.predict(Xw)
            est = estimate_mae({"x0": Xw[:, 0], "x1": Xw[:, 1]}, pred, loss_model)
            # E|e| for e ~ N(bias, noise): the MAE with no noise of its own
            bias = 3 * Xw[:, 0] - pred
            expected = float(np.mean(noise * np.sqrt(2 / np.pi) * np.exp(-bias**2 / (2 * noise**2))
                                     + bias * (1 - 2 * norm_cdf(-bias / noise))))
            rows.append((est["value"], float(np.abs(yw - pred).mean()), est["low"], est["high"], expected))
    return rows


def norm_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(x)


def fill(home: str, n: int) -> None:
    """``n`` iris-shaped binary predictions through the writer, 10 % labelled."""
    log = PredictionLog(home, start=False)
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d"]
    for lo in range(0, n, 10_000):
        m = min(10_000, n - lo)
        rows = rng.normal(0, 1, (m, 4))
        p1 = (1 / (1 + np.exp(-rows[:, 0] * 2))).astype(np.float32)
        proba = np.column_stack([1 - p1, p1])
        labels = proba.argmax(axis=1)
        log.write([PredictionEvent(id=f"r{lo + j}", ts=1e9 + (lo + j) / 100, model="m", version=1,
                                   inputs={c: rows[j, k:k + 1] for k, c in enumerate(names)},
                                   outputs={"label": labels[j:j + 1], "probabilities": proba[j:j + 1]},
                                   latency_ms=1.0, status=200, error=None) for j in range(m)])
    labelled = [{"id": f"r{i}", "label": int(rng.integers(0, 2))} for i in range(0, n, 10)]
    for lo in range(0, len(labelled), 5_000):
        log.feedback("m", labelled[lo:lo + 5_000])
    log.close()


def timing(n: int) -> list[float]:
    rng = np.random.default_rng(3)
    p = rng.random(2_000)
    calibration = fit_calibration(np.column_stack([1 - p, p]), (rng.random(2_000) < p).astype(int), [0, 1])
    with tempfile.TemporaryDirectory() as home:
        t0 = time.perf_counter()
        fill(home, n)
        print(f"filled {n:,} predictions in {time.perf_counter() - t0:.0f} s "
              f"({os.path.getsize(os.path.join(home, 'log.db')) / 2**20:.0f} MiB)")
        reader = LogReader(home)
        times = []
        for _ in range(8):
            notes: list[str] = []
            t0 = time.perf_counter()
            snap = estimated_quality(reader, "m", 1, {"estimation": calibration}, window=WINDOW, windows=10,
                                     notes=notes)
            times.append(1000 * (time.perf_counter() - t0))
        reader.close()
        assert snap is not None and snap["n"] == WINDOW and len(snap["series"]) == 10, (snap, notes)
        return times[1:]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"windows of {WINDOW} predictions, {STEPS} drift steps x {PER_STEP} windows")
    for title, rows in (("CBPE accuracy, covariate shift", classifier_scenario(concept=False)),
                        ("CBPE accuracy, concept drift (where CBPE fails)", classifier_scenario(concept=True)),
                        ("DLE MAE, covariate shift", regressor_scenario())):
        print(f"\n{title}:\n  {tracking(rows)}")
        print("  window  estimated  [band]          realised  expected")
        for i, (est, real, lo, hi, expected) in enumerate(rows):
            print(f"  {i:6d}  {est:9.3f}  [{lo:.3f}, {hi:.3f}]  {real:8.3f}  {expected:8.3f}")
    print("\nover seeds 1-5 (20 windows each):")
    for title, scenario in (("CBPE, covariate shift", lambda s: classifier_scenario(False, s)),
                            ("CBPE, concept drift", lambda s: classifier_scenario(True, s)),
                            ("DLE, covariate shift", lambda s: regressor_scenario(s + 1))):
        print(f"  {title}: {tracking([w for seed in range(1, 6) for w in scenario(seed)])}")
    times = timing(n)
    print(f"\nestimated_quality over {n:,} logged predictions (10 windows of {WINDOW}): "
          f"median {statistics.median(times):.1f} ms, min {min(times):.1f}, max {max(times):.1f}")


if __name__ == "__main__":
    main()
