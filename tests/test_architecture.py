"""The package's dependency rules, checked on the code and on a running server.

The import-linter contracts in pyproject.toml hold the layers (face -> workflow -> parts -> server ->
monitor -> views -> store, signature, errors), the server's forbidden imports and the absence of
circles. The second test checks what a static reading cannot: the modules a server has loaded after
it answered predictions, feedback and a ``/metrics`` scrape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nbdeploy.store import Store

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_SIDE = ["sklearn", "skl2onnx", "IPython", "ipykernel", "ipywidgets", "matplotlib", "nbdeploy.api",
                 "nbdeploy.deployment", "nbdeploy.lifecycle", "nbdeploy.convert", "nbdeploy.local",
                 "nbdeploy.display.monitor", "nbdeploy.display.card", "nbdeploy.display.reports"]

SERVER = """
import json, sys
from starlette.testclient import TestClient
from nbdeploy.serve.app import create_app
from nbdeploy.serve.server import make_sink
from nbdeploy.store import Store

store = Store(sys.argv[1])
row = json.loads(sys.argv[2])  # the example request stored with the version
with TestClient(create_app(store, sink=make_sink(store)), base_url="http://127.0.0.1") as client:
    answer = client.post("/v2/models/iris/infer", json={"inputs": row})
    assert answer.status_code == 200, answer.text
    ids = answer.json()["id"]
    client.post("/v2/models/iris/feedback", json=[{"id": ids, "label": 0}])
    assert "nbdeploy_" in client.get("/metrics").text
    client.get("/v2/models/iris")
    client.get("/openapi.json")
loaded = [m for m in json.loads(sys.argv[3]) if m in sys.modules or any(k.startswith(m + ".") for k in sys.modules)]
print(json.dumps(loaded))
"""


def test_the_import_contracts_hold() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.server
def test_a_server_that_predicted_took_feedback_and_was_scraped_never_loaded_the_notebook_side(served) -> None:
    example = Store(served["home"]).version("iris", 1).meta["example"]  # a request a user can send
    result = subprocess.run([sys.executable, "-c", SERVER, served["home"], json.dumps(example),
                             json.dumps(NOTEBOOK_SIDE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
