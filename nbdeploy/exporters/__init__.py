"""Export a stored version for other platforms: ``nbdeploy.export(name, to, directory)``.

Formats:

* ``bundle``: a folder that is itself a one-model store, with pinned requirements, a wheel of
  nbdeploy and a README: ``nbdeploy serve --home BUNDLE`` serves the same V2 API anywhere.
* ``docker``: the bundle plus a Dockerfile whose command is that serve command.
* ``triton``: a Triton model repository (``NAME/config.pbtxt``, ``NAME/VERSION/model.onnx``).
* ``kserve``: a Triton repository plus an ``InferenceService`` manifest on the V2 protocol.
* ``ray``: the bundle plus a Ray Serve config file for ``serve deploy`` on a cluster.

The package is ``exporters`` rather than ``export`` so that importing it can never shadow the
``nbdeploy.export`` function (importing a submodule sets the parent package's attribute).
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from nbdeploy.errors import InvalidInput

FORMATS = ("bundle", "docker", "triton", "kserve", "ray")


def export(name: str, to: str, directory: str | os.PathLike[str], *, version: int | str | None = None,
           home: str | os.PathLike[str] | None = None) -> Path:
    """Write ``name`` (default: its production version) in format ``to`` into ``directory``.

    ``version`` is a version number or an alias. ``directory`` must not exist or be empty; it is
    written whole or not at all. Returns the directory.
    """
    writer = _writer(to)
    from nbdeploy.local import open_store, resolve

    store = open_store(home)
    if version is not None and not str(version).isdigit():
        record = resolve(store, name, alias=str(version))
    else:
        record = resolve(store, name, version)
    target = Path(directory).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInput(f"{target} already exists and is not an empty directory; choose a new one")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        writer(record, staging)
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
    close = difflib.get_close_matches(str(to), FORMATS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InvalidInput(f"unknown export format {to!r}{hint}; formats: {', '.join(FORMATS)}")


__all__ = ["FORMATS", "export"]
