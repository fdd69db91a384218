"""The Ray export: a bundle plus a Serve config whose application is nbdeploy's app builder."""

from __future__ import annotations

import json

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import nbdeploy
import nbdeploy.exporters
from nbdeploy.serve.ray import IMPORT_PATH, MAX_ONGOING_REQUESTS


def test_serve_config_deploys_the_bundle_with_a_pinned_version(source, out):
    path = nbdeploy.export("iris", "ray", out, home=source["home"])
    doc = yaml.safe_load((path / "serve-config.yaml").read_text())
    assert doc["logging_config"] == {"enable_access_log": False}
    (app,) = doc["applications"]
    assert app["import_path"] == IMPORT_PATH and app["route_prefix"] == "/"
    assert app["args"]["home"] == "/srv/nbdeploy/iris-2" and app["args"]["require_token"] is True
    (deployment,) = app["deployments"]
    assert deployment["max_ongoing_requests"] == MAX_ONGOING_REQUESTS
    assert deployment["user_config"] == {"models": {"iris": {"production": 2}}}
    assert (path / "nbdeploy.db").is_file() and (path / "models" / "iris" / "2" / "model.onnx").is_file()
    assert json.loads((path / "request.json").read_text())["inputs"]


def test_config_validates_against_ray_schema_when_ray_is_installed(source, out):
    import pytest

    schema = pytest.importorskip("ray.serve.schema", reason="Ray Serve is not installed")
    path = nbdeploy.export("iris", "ray", out, home=source["home"])
    schema.ServeDeploySchema(**yaml.safe_load((path / "serve-config.yaml").read_text()))


def test_readme_has_the_cluster_commands(source, out):
    text = (nbdeploy.export("iris", "ray", out, home=source["home"]) / "README.md").read_text()
    for command in ("serve deploy serve-config.yaml", "pip install --no-deps wheels/*.whl",
                    "/v2/models/iris/infer -d @request.json", "private network"):
        assert command in text, command


def test_hashes_keep_ray_out_of_the_hashed_requirements(source, out, monkeypatch):
    from nbdeploy.exporters import packaging

    monkeypatch.setattr(packaging, "pinned_hashes", lambda pins: {
        canonicalize_name(Requirement(p).name): ["0" * 64] for p in pins})
    path = nbdeploy.exporters.export("iris", "ray", out, home=source["home"], hashes=True)
    text = (path / "README.md").read_text()
    assert "pip install --require-hashes --only-binary=:all: -r requirements.txt\n   pip install 'ray[serve]" in text
    assert "ray" not in {Requirement(line.split()[0]).name for line in (path / "requirements.txt").read_text()
                         .splitlines() if line and not line.startswith(("#", " "))}
