"""The ``docker`` export: the bundle plus a Dockerfile whose command is the bundle's serve command.

No image is built here. The Dockerfile is the plain, standard one: a slim Python base of the
exporting Python's minor version (the pins are for it), the pinned requirements in their own
layer, the nbdeploy wheel with ``--no-deps``, the store under ``/model``, ``nbdeploy serve``.

What the image is built from can be locked: ``base_image="python:3.11-slim@sha256:..."`` pins the
base by digest (a tag alone moves when it is rebuilt), and ``hashes=True`` installs the
requirements with ``pip install --require-hashes``. Neither is the default: the digest is not known
here without asking a registry, and hashes need pip to download every wheel at export time.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from nbdeploy.errors import InvalidInput
from nbdeploy.exporters.bundle import HASHED, write_bundle
from nbdeploy.store import VersionRecord

HOME = "/model"
PORT = 8000
TOKEN_FILE = "server.token"  # where the server keeps its bearer token (nbdeploy.serve.security)
CMD = ["nbdeploy", "serve", "--home", HOME, "--host", "0.0.0.0", "--port", str(PORT)]
# [registry[:port]/]path[:tag][@sha256:digest], as Docker names images; nothing else reaches the FROM line
IMAGE_RE = re.compile(r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                      r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
                      r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>[A-Za-z0-9_+.-]+:\S+))?")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def default_base_image() -> str:
    """The default base: the official slim image of the exporting Python's minor version (a tag)."""
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


def check_image(image: str) -> str:
    """``image`` if it is an image reference; a digest must be a full ``sha256:`` one."""
    match = IMAGE_RE.fullmatch(image) if isinstance(image, str) else None
    if match is None:
        raise InvalidInput(f"base_image {image!r} is not an image reference: use NAME[:TAG][@sha256:DIGEST], "
                           f"e.g. {default_base_image()}@sha256:<64 hex digits>")
    if match["digest"] is not None and not DIGEST_RE.fullmatch(match["digest"]):
        raise InvalidInput(f"base_image {image!r} has a digest that is not sha256:<64 lowercase hex digits>; "
                           f"get it with: docker buildx imagetools inspect {image.split('@')[0]}")
    return image


def pinned(image: str) -> bool:
    return "@sha256:" in image


def dockerfile(record: VersionRecord, base: str | None = None, hashes: bool = False) -> str:
    cmd = ", ".join(f'"{part}"' for part in CMD)
    base = base or default_base_image()
    base_note = ("The base image is pinned by digest." if pinned(base) else
                 "The base image is a tag, which moves: pin it by digest (see README.md).")
    install = f"pip install {HASHED}" if hashes else "pip install -r requirements.txt"
    pins = ("pinned as exported, each to its wheel's sha256" if hashes else "pinned as exported")
    return f"""# {record.name} version {record.version}, served by nbdeploy (Open Inference Protocol V2).
# Build: docker build -t {image_name(record)} .
# Run:   see README.md (serving on 0.0.0.0 needs nbdeploy's token).
# {base_note}
FROM {base}

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR {HOME}

# Serving dependencies, {pins}: their own layer, so a new model reuses it.
COPY requirements.txt {HOME}/requirements.txt
RUN {install}

# nbdeploy itself, without the notebook-side dependencies it declares.
COPY wheels/ {HOME}/wheels/
RUN pip install --no-deps {HOME}/wheels/*.whl

# The one-model store: index and model files.
COPY nbdeploy.db {HOME}/nbdeploy.db
COPY models/ {HOME}/models/

# An unprivileged user owns the store: the server writes its state, token and log there.
RUN useradd --system --uid 10001 nbdeploy && chown -R nbdeploy {HOME}
USER nbdeploy

EXPOSE {PORT}
CMD [{cmd}]
"""


def image_name(record: VersionRecord) -> str:
    return f"{record.name.lower().replace('_', '-')}:{record.version}"


def write_docker(record: VersionRecord, directory: Path, *, base_image: str | None = None,
                 hashes: bool = False) -> None:
    """The bundle plus a Dockerfile; ``base_image`` (pin it with ``@sha256:``) replaces the default
    ``python:X.Y-slim``, ``hashes`` installs the requirements with ``--require-hashes``."""
    base = check_image(base_image) if base_image is not None else None
    write_bundle(record, directory, hashes=hashes)
    (directory / "Dockerfile").write_text(dockerfile(record, base, hashes))
    (directory / ".dockerignore").write_text(".venv/\n**/__pycache__/\nlog.db*\nserver.*\nnbdeploy.db-*\n")
    readme = directory / "README.md"
    readme.write_text(readme.read_text() + docker_readme(record, base, hashes))


def docker_readme(record: VersionRecord, base: str | None = None, hashes: bool = False) -> str:
    image = image_name(record)
    base = base or default_base_image()
    return f"""
## Docker

`Dockerfile` builds an image that serves this bundle with the same command, on port {PORT} of the
container, from `{base}` (the Python minor version the pins were made for):

```bash
docker build -t {image} .
docker run -d --name {record.name.lower()} -p 127.0.0.1:{PORT}:{PORT} {image}
TOKEN=$(docker exec {record.name.lower()} cat {HOME}/{TOKEN_FILE})
curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:{PORT}/v2/models/{record.name}
```

The command binds `0.0.0.0` inside the container, so nbdeploy's token mechanism is on (see
"Listening beyond this machine" above): the server creates `{HOME}/{TOKEN_FILE}` on its first start
(or uses the one you mount there, at least 32 characters), and every request but the health checks
sends `Authorization: Bearer <token>`. Requests must name the server by an address it knows
(loopback, the container's own name and addresses): add `--allow-host NAME` to the command for a
DNS name clients use. Publishing on `127.0.0.1` keeps the port on this machine; put TLS in front
before exposing it further.

Predictions are logged inside the container (`{HOME}/log.db`). To keep them, mount this folder
over `{HOME}` (`-v "$PWD":{HOME}`), writable by the container's user (uid 10001).

{supply_chain(base, hashes)}
"""


def supply_chain(base: str, hashes: bool) -> str:
    """What the README says of where the image's contents come from, for the options chosen."""
    name = base.split("@")[0]
    if pinned(base):
        text = (f"The base image is pinned by digest (`{base}`): a rebuild starts from the same image even "
                "after its tag moves.")
    else:
        text = (f"The base image is the tag `{base}`, which moves when it is rebuilt upstream. To build "
                f"from a known image, export with `base_image=\"{name}@sha256:<digest>\"`; the digest of "
                f"the image the tag names now is given by `docker buildx imagetools inspect {name}`.")
    if hashes:
        return text + (" Every Python package is installed with `pip install --require-hashes`: pip installs "
                       "the exact wheels hashed at export (Linux, this machine's architecture) or stops.")
    return text + (" Python packages are pinned by version only; export with `hashes=True` for "
                   "`pip install --require-hashes` (pip then downloads every wheel at export to hash it).")
