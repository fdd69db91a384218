"""The ``ray`` export: the bundle plus a Ray Serve config for ``serve deploy`` on a real cluster.

Layout::

    serve-config.yaml   Ray Serve config: import path nbdeploy.serve.ray:app_builder, args.home
    (the bundle)        nbdeploy.db, models/, requirements.txt, wheels/ (see exporters.bundle)
    request.json        one example V2 request
    README.md           the bundle's README plus how to install, deploy, update and call it on Ray

The config reads the bundle at ``/srv/nbdeploy/NAME-VERSION`` on every node (copied there, or a
shared volume: Serve configs accept only remote URIs as ``working_dir``), serves the same V2 API
as ``nbdeploy serve`` through Ray's HTTP proxy, requires nbdeploy's token (``NBDEPLOY_TOKEN`` on
the nodes), and pins what is served in ``user_config``: changing it is a
reconfigure of the running replicas, not a redeploy.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from nbdeploy.exporters import describe
from nbdeploy.exporters.bundle import HASHED, write_bundle
from nbdeploy.serve.ray import APP_NAME, DEPLOYMENT_NAME, IMPORT_PATH, MAX_ONGOING_REQUESTS
from nbdeploy.store import PRODUCTION, VersionRecord

CONFIG = "serve-config.yaml"
PORT = 8000


def home_on_nodes(record: VersionRecord) -> str:
    return f"/srv/nbdeploy/{record.name}-{record.version}"


def ray_requirement() -> str:
    try:
        return f"ray[serve]=={metadata.version('ray')}"
    except metadata.PackageNotFoundError:
        return "ray[serve]"


def serve_config(record: VersionRecord) -> str:
    # JSON is YAML: the nested values are written with json.dumps so names need no YAML quoting rules
    models = json.dumps({"models": {record.name: {PRODUCTION: record.version}}})
    return f"""# Ray Serve config for nbdeploy model {record.name!r} version {record.version} (see README.md).
# Deploy on a running cluster:  serve deploy {CONFIG} --address http://HEAD:8265
# Ray opens ports on every interface of every node: keep the cluster on a private network behind
# a firewall, with Ray's token authentication on; this endpoint requires nbdeploy's token too.
proxy_location: EveryNode
http_options:
  host: 0.0.0.0
  port: {PORT}
logging_config:
  enable_access_log: false
applications:
  - name: {APP_NAME}
    route_prefix: /
    import_path: {IMPORT_PATH}
    runtime_env:
      env_vars:
        RAY_USAGE_STATS_ENABLED: "0"
    args:
      home: {home_on_nodes(record)}   # this directory, at this path on every node (or a shared volume)
      require_token: true        # clients send Authorization: Bearer $NBDEPLOY_TOKEN
      allow_hosts: []            # add the host names clients use (load balancer, DNS name)
    deployments:
      - name: {DEPLOYMENT_NAME}
        num_replicas: 2          # or autoscaling_config: {{min_replicas: 1, max_replicas: 8}}
        max_ongoing_requests: {MAX_ONGOING_REQUESTS}
        user_config: {models}
"""


def write_ray(record: VersionRecord, directory: Path, *, hashes: bool = False) -> None:
    """The bundle plus a Ray Serve config; ``hashes`` pins the serving dependencies to their wheels' sha256."""
    write_bundle(record, directory, hashes=hashes)
    (directory / CONFIG).write_text(serve_config(record))
    (directory / "request.json").write_text(describe.request_json(record))
    readme = directory / "README.md"
    readme.write_text(readme.read_text() + ray_readme(record, hashes))


def install_lines(hashes: bool) -> str:
    """Ray itself is not in requirements.txt: with hashes it installs in a command of its own."""
    if hashes:
        return f"pip install {HASHED}\n   pip install '{ray_requirement()}'"
    return f"pip install -r requirements.txt '{ray_requirement()}'"


def ray_readme(record: VersionRecord, hashes: bool = False) -> str:
    return f"""
## Ray Serve

`{CONFIG}` serves this bundle on a Ray cluster with Ray Serve: the same nbdeploy runtime
(ONNX Runtime sessions, batching, validation) and the same V2 API, one replica per Ray actor, behind
Ray's HTTP proxy on port {PORT} of every node.

1. Install the serving stack on every node (or in the cluster's image), with the Python minor
   version the pins were made for:

   ```bash
   {install_lines(hashes)}
   pip install --no-deps wheels/*.whl
   ```

2. Give every node the same token, in the environment Ray starts with
   (`export NBDEPLOY_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')` before
   `ray start`, or a Kubernetes secret as an environment variable with KubeRay), and put the host
   names clients use in `allow_hosts`.

3. Put this directory at `{home_on_nodes(record)}` on every node (`rsync -a ./ NODE:{home_on_nodes(record)}/`,
   or a shared volume mounted there; the replicas write the store's WAL files, so it must be
   writable), or change `args.home` to where it is. Then deploy:

   ```bash
   serve deploy {CONFIG} --address http://HEAD:8265
   serve status --address http://HEAD:8265
   curl -s -H "Authorization: Bearer $NBDEPLOY_TOKEN" http://HOST:{PORT}/v2/models/{record.name}/ready
   curl -s -H "Authorization: Bearer $NBDEPLOY_TOKEN" -H 'Content-Type: application/json' \\
     http://HOST:{PORT}/v2/models/{record.name}/infer -d @request.json
   ```

4. Serve another version: add it to the store (a new bundle), then change only `user_config`
   (`{{"models": {{"{record.name}": {{"production": N}}}}}}`) and run `serve deploy` again. Ray
   then calls `reconfigure()` on the running replicas, which load the version beside the old one
   and swap; requests in flight finish on the old version.

Ray listens on many ports on all interfaces (GCS, raylets, object store, workers, dashboard):
never expose a Ray cluster to an untrusted network; keep it on a private network behind a
firewall and leave Ray's token authentication on.
"""
