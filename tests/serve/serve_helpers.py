"""Helpers for the server tests: converted models in a store, request bodies, an in-process client, and
`nbdeploy serve` as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from typing import Any

import pandas as pd

from nbdeploy.convert.conversion import to_onnx
from nbdeploy.signature import from_sample
from nbdeploy.store import PRODUCTION, Store

with warnings.catch_warnings():  # starlette would rather have httpx2; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

BASE_URL = "http://127.0.0.1"
__all__ = ["BASE_URL", "TestClient", "add_version", "converted", "iris_inputs", "scrape", "start_server", "stop_server"]


def converted(model: Any, X: Any) -> tuple[bytes, dict[str, Any]]:
    conv = to_onnx(model, from_sample(X))
    meta = {"task": conv.task, "classes": conv.classes, "outputs": conv.outputs,
            "signature": conv.signature.to_dict()}
    return conv.onnx_bytes, meta


def add_version(store: Store, name: str, onnx_meta: tuple[bytes, dict[str, Any]], *,
                alias: str | None = PRODUCTION, serve: bool = True) -> int:
    onnx_bytes, meta = onnx_meta
    version = store.register(name, onnx_bytes, meta)
    if alias:
        store.set_alias(name, alias, version)
    if serve:
        store.set_serving(name, True)
    return version


def iris_inputs(X: pd.DataFrame, datatype: str = "FP32") -> list[dict[str, Any]]:
    return [{"name": c, "datatype": datatype, "shape": [len(X), 1], "data": X[c].tolist()} for c in X.columns]


class Scrape(dict[tuple[str, tuple[tuple[str, str], ...]], float]):
    """The samples of a ``/metrics`` text: ``scrape(text)("name", label="value", ...)`` is one value."""

    def __call__(self, name: str, **labels: str) -> float:
        return self[name, tuple(sorted(labels.items()))]


def scrape(text: str) -> Scrape:
    """Parse a ``/metrics`` text with prometheus_client's own parser (so it also checks the format)."""
    from prometheus_client.parser import text_string_to_metric_families

    return Scrape({(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples})


def start_server(store: Store, workers: int | None = None, *, stderr: int = subprocess.PIPE,
                 **env: str) -> subprocess.Popen:
    """``nbdeploy serve`` on ``store`` (a free port; ``workers`` processes; ``env`` added to the environment),
    returned once it serves what the store holds and every worker has started. Its stderr is a pipe to read
    (pass ``stderr=subprocess.DEVNULL`` for a chatty server that is not read)."""
    args = ["--workers", str(workers)] if workers else []
    proc = subprocess.Popen([sys.executable, "-m", "nbdeploy.cli", "serve", "--home", store.location, "--port", "0",
                             *args], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = store.server()
        if (record is not None and record.pid == proc.pid and (not workers or len(store.workers()) == workers)
                and record.applied >= store.generation()):
            return proc
        assert proc.poll() is None, f"the server exited at start-up: {proc.stderr and proc.stderr.read()[-2000:]!r}"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the {workers or 1}-worker server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server started by :func:`start_server` as ``nbdeploy stop`` does (SIGTERM), killing it if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
