"""The ``docker`` export: the bundle plus a Dockerfile whose command is the bundle's serve command.

No image is built here. The Dockerfile is the plain, standard one: a slim Python base of the
exporting Python's minor version (the pins are for it), the pinned requirements in their own
layer, the nbdeploy wheel with ``--no-deps``, the store under ``/model``, ``nbdeploy serve``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nbdeploy.exporters.bundle import write_bundle
from nbdeploy.store import VersionRecord

HOME = "/model"
PORT = 8000
TOKEN_FILE = "server.token"  # where the server keeps its bearer token (nbdeploy.serve.security)
CMD = ["nbdeploy", "serve", "--home", HOME, "--host", "0.0.0.0", "--port", str(PORT)]


def base_image() -> str:
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


def dockerfile(record: VersionRecord) -> str:
    cmd = ", ".join(f'"{part}"' for part in CMD)
    return f"""# {record.name} version {record.version}, served by nbdeploy (Open Inference Protocol V2).
# Build: docker build -t {image_name(record)} .
# Run:   see README.md (serving on 0.0.0.0 needs nbdeploy's token).
FROM {base_image()}

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR {HOME}

# Serving dependencies, pinned as exported: their own layer, so a new model reuses it.
COPY requirements.txt {HOME}/requirements.txt
RUN pip install -r requirements.txt

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


def write_docker(record: VersionRecord, directory: Path) -> None:
    write_bundle(record, directory)
    (directory / "Dockerfile").write_text(dockerfile(record))
    (directory / ".dockerignore").write_text(".venv/\n**/__pycache__/\nlog.db*\nserver.*\nnbdeploy.db-*\n")
    readme = directory / "README.md"
    readme.write_text(readme.read_text() + docker_readme(record))


def docker_readme(record: VersionRecord) -> str:
    image = image_name(record)
    return f"""
## Docker

`Dockerfile` builds an image that serves this bundle with the same command, on port {PORT} of the
container, from `{base_image()}` (the Python minor version the pins were made for):

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
"""
