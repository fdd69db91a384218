"""The docker export: the bundle plus a plain Dockerfile whose command is the bundle's serve command."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import nbdeploy
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
