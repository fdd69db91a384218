"""The bundle: a one-model store with pins, a wheel and a README, served from a fresh environment that
has only those (no scikit-learn, pandas or IPython); and the export errors."""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.metadata
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import nbdeploy
from nbdeploy import client
from nbdeploy.errors import InvalidInput, NotFound
from nbdeploy.exporters.bundle import INSTALL, SERVE
from nbdeploy.exporters.packaging import SERVE_REQUIREMENTS
from nbdeploy.store import Store

NOTEBOOK_SIDE = ("pandas", "scikit-learn", "scipy", "ipython", "ipywidgets", "skl2onnx", "matplotlib", "skops")


def test_bundle_is_a_one_model_store_serving_the_same_version(source, out):
    path = nbdeploy.export("iris", "bundle", out, home=source["home"])
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "models", "nbdeploy.db", "requirements.txt",
                                                       "wheels"]  # no -wal/-shm beside the database
    original = Store(source["home"]).version("iris", 2)
    store = Store(path)
    assert store.model_names() == store.serving_models() == ["iris"]
    assert store.aliases("iris") == {"production": 2} and [v.version for v in store.versions("iris")] == [2]
    copy = store.version("iris", 2)
    assert copy.onnx_bytes() == original.onnx_bytes() and copy.meta == original.meta
    assert json.loads((path / "models" / "iris" / "2" / "model.json").read_text()) == original.meta
    X, _ = source["iris"]
    np.testing.assert_array_equal(nbdeploy.load("iris", home=path).predict_proba(X),
                                  nbdeploy.load("iris", home=source["home"]).predict_proba(X))


def test_requirements_pin_what_serving_imports_and_nothing_of_the_notebook_side(source, out):
    text = (nbdeploy.export("diabetes", "bundle", out, home=source["home"]) / "requirements.txt").read_text()
    pins = dict(line.split("==") for line in text.splitlines() if line and not line.startswith("#"))
    names = {name.split("[")[0].lower().replace("_", "-"): version for name, version in pins.items()}
    for root in SERVE_REQUIREMENTS:
        name = root.split("[")[0]
        assert names[name] == importlib.metadata.version(name)
    assert "uvicorn[standard]" in pins and {"uvloop", "httptools", "anyio"} <= set(names)
    assert not set(NOTEBOOK_SIDE) & set(names)


def test_wheel_holds_the_package_its_entry_point_and_a_valid_record(source, out):
    path = nbdeploy.export("iris", "bundle", out, home=source["home"])
    (wheel,) = (path / "wheels").iterdir()
    version = importlib.metadata.version("nbdeploy")
    assert wheel.name == f"nbdeploy-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"nbdeploy-{version}.dist-info"
        assert {"nbdeploy/__init__.py", "nbdeploy/cli.py", "nbdeploy/serve/server.py", f"{info}/WHEEL"} <= names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert "nbdeploy = nbdeploy.cli:main" in zf.read(f"{info}/entry_points.txt").decode()
        assert zf.read(f"{info}/METADATA").decode().startswith("Metadata-Version:")
        for name, digest, size in csv.reader(io.StringIO(zf.read(f"{info}/RECORD").decode())):
            if name != f"{info}/RECORD":
                data = zf.read(name)
                assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
                    b"=").decode() and int(size) == len(data)


def test_readme_gives_the_commands_and_the_inputs(source, out):
    text = (nbdeploy.export("pets", "bundle", out, home=source["home"]) / "README.md").read_text()
    assert f"```bash\n{INSTALL}\n{SERVE}\n```" in text
    assert "| `kind` | `kind` | BYTES | [-1, 1] | `__nbdeploy_missing__` |" in text
    assert "curl -s -X POST http://127.0.0.1:8000/v2/models/pets/infer" in text


def test_version_and_alias(source, out, tmp_path):
    first = Store(nbdeploy.export("iris", "bundle", out, version=1, home=source["home"]))
    assert first.aliases("iris") == {"production": 1}
    by_alias = Store(nbdeploy.export("iris", "bundle", tmp_path / "alias", version="production",
                                     home=source["home"]))
    assert by_alias.aliases("iris") == {"production": 2}


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"to": "tirton"}, InvalidInput, "unknown export format 'tirton' (did you mean 'triton'?); formats: bundle"),
    ({"name": "irsi"}, NotFound, "no model named 'irsi' (did you mean 'iris'?)"),
    ({"version": 9}, NotFound, "model 'iris' has no version 9; versions: 1, 2"),
    ({"version": "canary"}, NotFound, "has no 'canary' alias; versions: 1, 2; aliases: production -> 2"),
    ({"version": 2.0}, InvalidInput, "a version is a number or an alias name, got 2.0"),
])
def test_errors_leave_nothing_behind(source, out, kwargs, error, message):
    args = {"name": "iris", "to": "bundle", **kwargs}
    with pytest.raises(error) as exc:
        nbdeploy.export(args.pop("name"), args.pop("to"), out, home=source["home"], **args)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert list(out.parent.iterdir()) == []


def test_directory_must_be_new_or_empty(source, out):
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="already exists and is not an empty directory"):
        nbdeploy.export("iris", "triton", out, home=source["home"])
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    assert nbdeploy.export("iris", "triton", out, home=source["home"]) == out.resolve()
    assert (out / "iris" / "config.pbtxt").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: bytes | None = None) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def fresh(source, tmp_path_factory) -> dict:
    """The iris bundle installed by its README's own commands: a new venv, requirements.txt, the wheel."""
    tmp = tmp_path_factory.mktemp("fresh")
    path = nbdeploy.export("iris", "bundle", tmp / "iris", home=source["home"])
    readme = (path / "README.md").read_text()
    install, serve = readme.split("```bash\n", 1)[1].split("\n```", 1)[0].splitlines()
    (tmp / "bin").mkdir()
    (tmp / "bin" / "python").symlink_to(sys._base_executable)  # `python` in the README: this Python, no venv
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "NBDEPLOY_HOME", "PYTHONPATH")}
    env.update(PATH=f"{tmp / 'bin'}{os.pathsep}{env['PATH']}", PIP_COMPILE="0", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_QUIET="1")
    done = subprocess.run(["bash", "-c", install], cwd=path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"path": path, "serve": serve, "env": env, "venv": path / ".venv"}


@contextlib.contextmanager
def serving(bundle: Path, fresh: dict, log: Path) -> Iterator[str]:
    """The README's serve command on a free port, from ``bundle``; yields the base URL when ready."""
    port = _free_port()
    command = shlex.split(fresh["serve"])
    command[0] = str(fresh["venv"] / "bin" / "nbdeploy")
    command[command.index("--port") + 1] = str(port)
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=bundle, env=fresh["env"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                if _get(f"{base}/v2/health/ready").get("ready"):
                    break
            assert time.monotonic() < deadline, "the bundle's server did not get ready in 60 s"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _infer(base: str, name: str, source: dict) -> None:
    """A V2 request of every row; the answers are the source model's."""
    X, model = source[name]
    predictor = nbdeploy.load(name, home=source["home"])
    body = json.dumps({"inputs": client.v2_inputs(predictor.signature, X)}).encode()
    outputs = client.outputs_by_name(_get(f"{base}/v2/models/{name}/infer", body))
    np.testing.assert_array_equal(outputs["label"], model.predict(X))
    np.testing.assert_array_equal(outputs["label"], predictor.predict(X))
    proba = predictor.predict_proba(X)
    np.testing.assert_array_equal(outputs["probabilities"].astype(proba.dtype), proba)


@pytest.mark.slow
def test_bundle_serves_from_a_fresh_environment(source, fresh, tmp_path):
    """Only the pins and the wheel are installed: nothing of the notebook side."""
    probe = "import importlib.metadata as m; print(sorted(d.metadata['Name'].lower() for d in m.distributions()))"
    listed = subprocess.run([fresh["venv"] / "bin" / "python", "-c", probe], capture_output=True, text=True,
                            check=True).stdout
    installed = set(json.loads(listed.replace("'", '"')))
    assert "nbdeploy" in installed and not set(NOTEBOOK_SIDE) & installed
    with serving(fresh["path"], fresh, tmp_path / "serve.log") as base:
        assert _get(f"{base}/v2/models/iris")["versions"] == ["2"]
        _infer(base, "iris", source)


@pytest.fixture(scope="module")
def pets_bundle(source, tmp_path_factory) -> Path:
    return nbdeploy.export("pets", "bundle", tmp_path_factory.mktemp("pets") / "pets", home=source["home"])


@pytest.mark.slow
def test_bundle_with_a_text_column_serves_from_a_fresh_environment(source, fresh, pets_bundle, tmp_path):
    with serving(pets_bundle, fresh, tmp_path / "serve.log") as base:
        _infer(base, "pets", source)


@pytest.mark.slow
def test_refusals_need_no_pandas(source, fresh, pets_bundle, tmp_path):
    """A request the fast path does not take (strings for a number) goes through the full check."""
    body = json.dumps({"inputs": [{"name": "kind", "datatype": "BYTES", "shape": [1, 1], "data": ["dog"]},
                                  {"name": "age", "datatype": "BYTES", "shape": [1, 1], "data": ["old"]}]}).encode()
    with serving(pets_bundle, fresh, tmp_path / "serve.log") as base, \
            pytest.raises(urllib.error.HTTPError) as refused:
        _get(f"{base}/v2/models/pets/infer", body)
    assert refused.value.code == 400, refused.value.read()
