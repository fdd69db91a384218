"""What a bundle installs: exact pins of the serving dependencies, and a wheel of nbdeploy itself.

The pins are the versions installed here, closed over their own requirements for this Python and
platform, so a fresh environment of the same Python minor version installs what was tested.

With ``hashes=True`` each pin also carries the sha256 of the wheel pip picks for it on Linux
(the Docker base image) on this machine's architecture, so ``pip install --require-hashes``
installs exactly those files or nothing. The hashes are of the files on the package index: pip
downloads them at export time (through the index and settings pip is configured with here).

The wheel is made from the installed package's own files (its modules and its distribution's
metadata), so it works alike for an editable install of a source tree and for an install from a
wheel, and needs no build backend at export time.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from nbdeploy.errors import NbdeployError

# What `nbdeploy serve` imports to start and to answer requests; their own requirements follow.
SERVE_REQUIREMENTS = ("numpy", "onnx", "onnxruntime", "protobuf", "starlette", "uvicorn[standard]", "orjson",
                      "prometheus-client")
WHEEL_TAG = "py3-none-any"
# The oldest glibc of the Debian releases python:X.Y-slim images are built on (bookworm): wheels
# for it or older install there.
LINUX_PLATFORM = "manylinux_2_36_{arch}"
DOWNLOAD_TIMEOUT = 900.0
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


def requirements_text(hashes: bool = False) -> str:
    """requirements.txt of the serving dependencies; with ``hashes``, each pin with its wheel's sha256."""
    machine = f"Python {platform.python_version()} on {sys.platform} {platform.machine()}"
    header = [
        "# The serving dependencies of this bundle, pinned to the versions it was exported with",
        f"# ({machine}). Install them in a fresh virtual environment of the same Python minor",
        "# version, then the nbdeploy wheel with --no-deps (see README.md).",
    ]
    pins = pinned_requirements()
    if not hashes:
        return "\n".join([*header, *pins]) + "\n"
    header += [f"# Hashes: the wheels for Linux {linux_arch()} ({LINUX_PLATFORM.format(arch=linux_arch())}); install",
               "# with pip install --require-hashes --only-binary=:all: -r requirements.txt."]
    return "\n".join([*header, *hashed_lines(pins, pinned_hashes(pins))]) + "\n"


def hashed_lines(pins: list[str], hashes: dict[str, list[str]]) -> list[str]:
    """``name==version \\`` followed by one ``--hash=sha256:...`` line per file, as pip reads them."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines: list[str] = []
    for pin in pins:
        digests = hashes.get(canonicalize_name(Requirement(pin).name))
        if not digests:
            raise NbdeployError(f"no wheel hash for {pin}: pip did not download it", 502)
        lines.append(" \\\n".join([pin, *(f"    --hash=sha256:{d}" for d in sorted(digests))]))
    return lines


def linux_arch() -> str:
    """This machine's architecture as Linux wheels name it (a Docker build here builds for it)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def pinned_hashes(pins: list[str]) -> dict[str, list[str]]:
    """sha256 of the wheel pip picks for each of ``pins`` on Linux for this Python and architecture,
    by canonical project name. pip downloads the wheels (``pip download``) into a temporary folder."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="nbdeploy-hashes-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--platform", LINUX_PLATFORM.format(arch=linux_arch()), "--python-version", python,
               "--implementation", "cp", "--dest", tmp, *pins]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NbdeployError(f"could not run pip to download the pinned wheels for their hashes: {exc}", 502) \
                from None
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise NbdeployError(f"pip could not download the pinned wheels to hash them ({tail}); export "
                                "without hashes, or where pip reaches the package index", 502)
        hashes: dict[str, list[str]] = {}
        for wheel in sorted(Path(tmp).glob("*.whl")):
            name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
            hashes.setdefault(name, []).append(hashlib.sha256(wheel.read_bytes()).hexdigest())
    return hashes


def build_wheel(out_dir: Path) -> Path:
    """``nbdeploy-<version>-py3-none-any.whl`` of the installed package, written to ``out_dir``."""
    dist = metadata.distribution("nbdeploy")
    version = dist.version
    package = Path(__file__).resolve().parents[1]  # the nbdeploy package directory
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
