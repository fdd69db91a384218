"""The ``bundle`` export: a folder that is itself a one-model nbdeploy store, ready to serve.

Layout::

    nbdeploy.db                         the store's index: this model serving, production -> VERSION
    models/NAME/VERSION/model.onnx      the version's ONNX file (sha256-checked when served)
    models/NAME/VERSION/model.json      its signature, classes, metrics, reference profile
    requirements.txt                    exact pins of the serving dependencies
    wheels/nbdeploy-X-py3-none-any.whl  nbdeploy itself, installed with --no-deps
    README.md                           the commands, the inputs and an example request

So ``nbdeploy serve --home BUNDLE`` serves the same V2 API as the notebook's endpoint, from an
environment with no scikit-learn, pandas or IPython.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from nbdeploy.exporters import describe
from nbdeploy.exporters.packaging import build_wheel, requirements_text
from nbdeploy.store import PRODUCTION, VersionRecord
from nbdeploy.store.registry import SCHEMA

INSTALL = ("python -m venv .venv && .venv/bin/pip install -r requirements.txt "
           "&& .venv/bin/pip install --no-deps wheels/*.whl")
HASHED = "--require-hashes --only-binary=:all: -r requirements.txt"  # how requirements with hashes install
SERVE = ".venv/bin/nbdeploy serve --home . --port 8000"


def write_bundle(record: VersionRecord, directory: Path, *, hashes: bool = False) -> None:
    """Write the bundle of ``record`` into the (empty) ``directory``; with ``hashes``, requirements.txt
    pins each wheel's sha256 (see :func:`nbdeploy.exporters.packaging.requirements_text`)."""
    write_store(record, directory)
    (directory / "requirements.txt").write_text(requirements_text(hashes=hashes))
    build_wheel(directory / "wheels")
    (directory / "README.md").write_text(readme(record, hashes=hashes))


def install_command(hashes: bool) -> str:
    return INSTALL.replace("-r requirements.txt", HASHED) if hashes else INSTALL


def write_store(record: VersionRecord, directory: Path) -> None:
    """A store holding only ``record``, under its own version number, served as ``production``."""
    model_dir = directory / "models" / record.name / str(record.version)
    model_dir.mkdir(parents=True)
    (model_dir / "model.onnx").write_bytes(record.onnx_bytes())  # refuses a file that is not the registered one
    (model_dir / "model.json").write_text(json.dumps(record.meta, indent=2, default=str))
    now = time.time()
    db = sqlite3.connect(directory / "nbdeploy.db", isolation_level=None)
    try:  # a plain rollback-journal file: nothing beside it to copy; the server switches it to WAL
        db.executescript(SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO versions (name, version, created_at, sha256, status, meta) VALUES (?,?,?,?,?,?)",
                   (record.name, record.version, record.created_at, record.sha256, "registered",
                    json.dumps(record.meta, default=str)))
        db.execute("INSERT INTO models (name, serving, updated_at) VALUES (?, 1, ?)", (record.name, now))
        db.execute("INSERT INTO aliases (name, alias, version, updated_at) VALUES (?,?,?,?)",
                   (record.name, PRODUCTION, record.version, now))
        db.execute("INSERT INTO alias_history (name, alias, version, at, kind) VALUES (?,?,?,?,'set')",
                   (record.name, PRODUCTION, record.version, now))
        db.execute("UPDATE state SET value = value + 1 WHERE key = 'generation'")
        db.execute("COMMIT")
    finally:
        db.close()


HASHES_NOTE = """
`requirements.txt` pins each package to the sha256 of its wheel for Linux on the architecture it
was exported on: pip installs exactly those files or stops. On another platform pip picks other
wheels and stops at the first hash: export again where you install, or drop `--require-hashes`.
"""


def readme(record: VersionRecord, hashes: bool = False) -> str:
    name, version = record.name, record.version
    request = json.dumps({"inputs": describe.example_inputs(record)})
    inputs = record.meta["signature"]["inputs"]
    frame_note = (f" The model was deployed from a DataFrame: one input per column. It also takes one\n"
                  f"`[n, {len(inputs)}]` tensor whose columns are these inputs, in this order."
                  if record.meta["signature"].get("frame") and len(inputs) > 1 else "")
    return f"""# `{name}` version {version}: an nbdeploy bundle

{describe.summary(record)}

This folder is a one-model nbdeploy store. `nbdeploy serve` serves it with the Open Inference
Protocol (V2) REST API, as the notebook's endpoint did: same inputs, same checks, same outputs.
Serving needs no scikit-learn, pandas or IPython: only the pinned packages in `requirements.txt`.

## Serve it

From this folder, with the same Python minor version it was exported with (see `requirements.txt`):

```bash
{install_command(hashes)}
{SERVE}
```
{HASHES_NOTE if hashes else ""}
Then, from another terminal:

```bash
curl -s http://127.0.0.1:8000/v2/health/ready
curl -s http://127.0.0.1:8000/v2/models/{name}
curl -s -X POST http://127.0.0.1:8000/v2/models/{name}/infer -H 'Content-Type: application/json' \\
  -d '{request}'
```

## Inputs

Requests name inputs as in the first column.{frame_note}

{describe.inputs_table(record)}

## Outputs

{describe.outputs_text(record)}

Ask for one with `"outputs": [{{"name": "label"}}]`.

## Listening beyond this machine

`nbdeploy serve` binds `127.0.0.1` unless told otherwise. Binding another address (`--host 0.0.0.0`,
as in a container) turns on nbdeploy's token mechanism: the server creates `server.token` in this
folder on its first start (owner-only) and every request but the health checks must send
`Authorization: Bearer <the token>`. Requests must also name the server by an address it knows
(loopback, the bound address, this machine's names); add `--allow-host NAME` for a DNS name clients
use. Put it behind TLS (a reverse proxy, or your platform's ingress) before exposing it to a network.

## What is in this folder

- `nbdeploy.db`, `models/{name}/{version}/`: the store. `model.onnx` is loaded only if its sha256
  matches the one recorded. `model.json` (and its copy in `nbdeploy.db`) holds the signature, the
  classes, held-out metrics, one example row and a reference profile of the training data for drift
  monitoring (column statistics and a sample of values): share the bundle as you would share the
  training data.
- `requirements.txt`: exact versions of the serving dependencies, as exported{
  ", each with the sha256 of its Linux wheel" if hashes else ""}.
- `wheels/`: nbdeploy itself. Install it with `--no-deps`: its declared dependencies are those of
  the notebook side (scikit-learn, pandas, Jupyter …), which serving does not need.
- Predictions and feedback sent to this server are logged beside the store (`log.db`).
"""
