"""The peers, each in its own virtual environment under benchmarks/.venvs: a plain FastAPI +
scikit-learn endpoint, the same FastAPI endpoint running nbdeploy's ONNX conversion in ONNX Runtime
(what one would write by hand after converting), MLflow's ``mlflow models serve`` and a minimal
BentoML service.

Each is installed on first use; a peer that cannot be installed is skipped with a message.
Peers load the scikit-learn model with pickle: that is the benchmark's own file, never nbdeploy's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"


def _sklearn_pin() -> str:
    import sklearn

    return f"scikit-learn=={sklearn.__version__}"


PACKAGES = {
    "fastapi": ["fastapi", "uvicorn[standard]", "pandas"],
    "fastapi-onnx": ["fastapi", "uvicorn[standard]", "onnxruntime"],
    "mlflow": ["mlflow>=3,<4"],
    "bentoml": ["bentoml>=1.4,<2", "pandas"],
}


def venv_python(name: str) -> Path | None:
    """The peer's interpreter, installing its environment on first use; None (with a message) if that fails."""
    root = VENVS / name
    python = root / "bin" / "python"
    marker = root / ".installed"
    if marker.exists():
        return python
    print(f"[setup] installing {name} into {root} (first run only)…", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *PACKAGES[name], _sklearn_pin(), "numpy"], check=True, capture_output=True, timeout=1200)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()[-3:]
        print(f"[skip] {name}: cannot install ({' | '.join(tail) or exc})", flush=True)
        return None
    marker.write_text("ok\n")
    return python


FASTAPI_APP = '''
import pickle
import numpy as np, pandas as pd
from fastapi import FastAPI, Request
app = FastAPI()
with open(__import__("os").environ["PEER_MODEL"], "rb") as fh:
    model, columns = pickle.load(fh)

@app.post("/predict")
async def predict(request: Request):
    body = await request.json()
    rows = body["data"]
    X = pd.DataFrame(rows, columns=columns) if columns else np.asarray(rows, dtype=np.float32)
    return {"predictions": model.predict(X).tolist()}
'''

FASTAPI_ONNX_APP = '''
import os
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
app = FastAPI()
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(os.environ["PEER_ONNX"], options, providers=["CPUExecutionProvider"])
names = [i.name for i in session.get_inputs()]
label = session.get_outputs()[0].name

@app.post("/predict")
async def predict(request: Request):
    body = await request.json()
    X = np.asarray(body["data"], dtype=np.float32)
    feeds = {n: X[:, j:j + 1] for j, n in enumerate(names)} if len(names) > 1 else {names[0]: X}
    return {"predictions": session.run([label], feeds)[0].tolist()}
'''

BENTO_SERVICE = '''
import os, pickle
import numpy as np, pandas as pd
import bentoml

with open(os.environ["PEER_MODEL"], "rb") as fh:
    MODEL, COLUMNS = pickle.load(fh)

@bentoml.service(workers=1)
class Model:
    @bentoml.api
    def predict(self, data: list[list[float]]) -> list:
        X = pd.DataFrame(data, columns=COLUMNS) if COLUMNS else np.asarray(data, dtype=np.float32)
        return MODEL.predict(X).tolist()
'''

MLFLOW_SAVE = '''
import pickle, sys
import numpy as np, pandas as pd
import mlflow.sklearn
from mlflow.models import infer_signature
model, columns = pickle.load(open(sys.argv[1], "rb"))
width = int(sys.argv[3])
X = pd.DataFrame(np.zeros((2, width)), columns=columns) if columns else np.zeros((2, width), np.float32)
mlflow.sklearn.save_model(model, sys.argv[2], signature=infer_signature(X, model.predict(X)),
                          serialization_format="cloudpickle")  # its skops default refuses tree models
'''


@dataclass
class PeerCommand:
    name: str
    argv: list[str]
    env: dict[str, str]
    path: str  # the scoring route
    cwd: Path


def command(peer: str, python: Path, model_pickle: Path, columns: list[str] | None, width: int, port: int,
            work: Path, model_onnx: Path | None = None) -> PeerCommand:
    # the peer's own bin first: MLflow starts `uvicorn` by name
    env = {**os.environ, "PEER_MODEL": str(model_pickle), "PEER_ONNX": str(model_onnx or ""),
           "PATH": f"{python.parent}:{os.environ.get('PATH', '')}"}
    if peer in ("fastapi", "fastapi-onnx"):  # one uvicorn command, two apps
        module = peer.replace("-", "_") + "_app"
        (work / f"{module}.py").write_text(FASTAPI_ONNX_APP if peer == "fastapi-onnx" else FASTAPI_APP)
        argv = [str(python), "-m", "uvicorn", f"{module}:app", "--port", str(port), "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        return PeerCommand(peer, argv, env, "/predict", work)
    if peer == "mlflow":
        target = work / f"mlflow-{model_pickle.stem}"
        if not target.exists():
            script = work / "mlflow_save.py"
            script.write_text(MLFLOW_SAVE)
            subprocess.run([str(python), str(script), str(model_pickle), str(target), str(width)], check=True,
                           capture_output=True, timeout=600)
        mlflow = python.parent / "mlflow"
        argv = [str(mlflow), "models", "serve", "-m", str(target), "-p", str(port), "--env-manager", "local",
                "-h", "127.0.0.1"]
        return PeerCommand(peer, argv, env, "/invocations", work)
    if peer == "bentoml":
        service = work / "bento_service.py"
        service.write_text(textwrap.dedent(BENTO_SERVICE))
        bentoml = python.parent / "bentoml"
        argv = [str(bentoml), "serve", "bento_service:Model", "--port", str(port), "--host", "127.0.0.1"]
        return PeerCommand(peer, argv, {**env, "BENTOML_DO_NOT_TRACK": "true"}, "/predict", work)
    raise ValueError(peer)
