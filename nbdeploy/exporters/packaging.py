"""What a bundle installs: exact pins of the serving dependencies, and a wheel of nbdeploy itself.

The pins are the versions installed here, closed over their own requirements for this Python and
platform, so a fresh environment of the same Python minor version installs what was tested.

The wheel is made from the installed package's own files (its modules and its distribution's
metadata), so it works alike for an editable install of a source tree and for an install from a
wheel, and needs no build backend at export time.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import platform
import sys
import zipfile
from pathlib import Path

from nbdeploy.errors import NbdeployError

# What `nbdeploy serve` imports to start and to answer requests; their own requirements follow.
SERVE_REQUIREMENTS = ("numpy", "onnx", "onnxruntime", "protobuf", "starlette", "uvicorn[standard]", "orjson")
WHEEL_TAG = "py3-none-any"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: the same files make the same wheel


def pinned_requirements(roots: tuple[str, ...] = SERVE_REQUIREMENTS) -> list[str]:
    """``name==version`` for ``roots`` and everything they require here, sorted by name."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        key, extras = canonicalize_name(req.name), frozenset(req.extras)
        if (key, extras) in done:
            continue
        done.add((key, extras))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise NbdeployError(f"{req.name} is needed to serve but is not installed here", 500) from None
        shown = f"{dist.metadata['Name']}[{','.join(sorted(extras))}]" if extras else dist.metadata["Name"]
        if extras or key not in pins:
            pins[key] = f"{shown}=={dist.version}"
        for text in dist.requires or []:
            sub = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return [pins[k] for k in sorted(pins)]


def requirements_text() -> str:
    machine = f"Python {platform.python_version()} on {sys.platform} {platform.machine()}"
    header = [
        "# The serving dependencies of this bundle, pinned to the versions it was exported with",
        f"# ({machine}). Install them in a fresh virtual environment of the same Python minor",
        "# version, then the nbdeploy wheel with --no-deps (see README.md).",
    ]
    return "\n".join([*header, *pinned_requirements()]) + "\n"


def build_wheel(out_dir: Path) -> Path:
    """``nbdeploy-<version>-py3-none-any.whl`` of the installed package, written to ``out_dir``."""
    import nbdeploy

    dist = metadata.distribution("nbdeploy")
    version = dist.version
    package = Path(nbdeploy.__file__).resolve().parent
    dist_info = f"nbdeploy-{version}.dist-info"
    files: list[tuple[str, bytes]] = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package.parent)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in {".pyc", ".pyo"} \
                and not any(part.startswith(".") for part in rel.parts):
            files.append((rel.as_posix(), path.read_bytes()))
    meta_text = dist.read_text("METADATA")
    if not meta_text:
        raise NbdeployError("the installed nbdeploy has no METADATA; reinstall it", 500)
    files.append((f"{dist_info}/METADATA", meta_text.encode()))
    files.append((f"{dist_info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: nbdeploy {version}\n"
                                         f"Root-Is-Purelib: true\nTag: {WHEEL_TAG}\n").encode()))
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        files.append((f"{dist_info}/entry_points.txt", entry_points.encode()))
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files]
    record.append(f"{dist_info}/RECORD,,")
    files.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"nbdeploy-{version}-{WHEEL_TAG}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return wheel


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
