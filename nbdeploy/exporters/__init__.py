"""Export a stored version for other platforms: ``nbdeploy.export(name, to, directory)``.

Formats:

* ``bundle``: a folder that is itself a one-model store, with pinned requirements, a wheel of
  nbdeploy and a README: ``nbdeploy serve --home BUNDLE`` serves the same V2 API anywhere.
* ``docker``: the bundle plus a Dockerfile whose command is that serve command.
* ``triton``: a Triton model repository (``NAME/config.pbtxt``, ``NAME/VERSION/model.onnx``).
* ``kserve``: a Triton repository plus an ``InferenceService`` manifest on the V2 protocol.
* ``ray``: the bundle plus a Ray Serve config file for ``serve deploy`` on a cluster.

Options, for the formats that install Python packages: ``hashes=True`` (bundle, docker, ray) pins
every serving dependency to the sha256 of its wheel, for ``pip install --require-hashes``;
``base_image=`` (docker) names the image to build from, pinned by digest with ``@sha256:...``.

The package is ``exporters`` rather than ``export`` so that importing it can never shadow the
``nbdeploy.export`` function (importing a submodule sets the parent package's attribute).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbdeploy.errors import InvalidInput, did_you_mean
from nbdeploy.store import open_store

FORMATS = ("bundle", "docker", "triton", "kserve", "ray")
OPTIONS: dict[str, tuple[str, ...]] = {"bundle": ("hashes",), "docker": ("base_image", "hashes"), "triton": (),
                                       "kserve": (), "ray": ("hashes",)}


def export(name: str, to: str, directory: str | os.PathLike[str], *, version: int | str | None = None,
           home: str | os.PathLike[str] | None = None, **options: Any) -> Path:
    """Write ``name`` (default: its production version) in format ``to`` into ``directory``.

    ``version`` is a version number or an alias. ``directory`` must not exist or be empty; it is
    written whole or not at all. ``options`` are the format's own (see :data:`OPTIONS`); one that is
    ``None`` or ``False`` is not asked for, so a caller may pass every option. Returns the directory.
    """
    writer = _writer(to)
    options = {k: v for k, v in options.items() if v is not None and v is not False}  # not asked for
    unknown = sorted(set(options) - set(OPTIONS[to]))
    if unknown:
        takes = f"takes {', '.join(OPTIONS[to])}" if OPTIONS[to] else "takes no options"
        raise InvalidInput(f"export to {to} {takes}; got {', '.join(unknown)}")
    record = open_store(home).resolve(name, version)
    target = Path(directory).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInput(f"{target} already exists and is not an empty directory; choose a new one")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        writer(record, staging, **options)
        staging.chmod(0o755)
        os.replace(staging, target)  # replaces an empty directory too: the export appears whole
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _writer(to: str) -> Callable[..., None]:
    if to == "bundle":
        from nbdeploy.exporters.bundle import write_bundle

        return write_bundle
    if to == "docker":
        from nbdeploy.exporters.docker import write_docker

        return write_docker
    if to == "triton":
        from nbdeploy.exporters.triton import write_repository

        return write_repository
    if to == "kserve":
        from nbdeploy.exporters.kserve import write_kserve

        return write_kserve
    if to == "ray":  # the bundle plus a Ray Serve config (serve deploy); see exporters/ray.py
        from nbdeploy.exporters.ray import write_ray

        return write_ray
    raise InvalidInput(f"unknown export format {to!r}{did_you_mean(to, FORMATS)}; formats: {', '.join(FORMATS)}")


__all__ = ["FORMATS", "OPTIONS", "export"]
