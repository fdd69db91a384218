"""The same runtime and V2 API hosted as a Ray Serve deployment, for users who outgrow one machine.

Each Ray replica builds the ordinary app (:func:`nbdeploy.serve.app.create_app`: sessions, batching,
validation, the V2 routes, the guard) over the store at ``home`` and hands it to Ray through
``@serve.ingress``. The store must be readable at the same path on every node (a shared volume),
be a bundle copied there (``%deploy export NAME --to ray DIR``), or be a PostgreSQL URL every node
reaches (then every replica logs its predictions and takes feedback in that one database).

What a replica serves is set by the deployment's ``user_config``, not by polling the store, so an
update is a Ray *lightweight update*: ``reconfigure()`` runs on every replica, which loads and warms
the new version beside the old and swaps its routing table (requests in flight finish on the old
version). ``user_config`` is one of::

    {"generation": N}                             # what the store says to serve (re-read now)
    {"models": {"iris": {"production": 3}}}       # an explicit map: model -> alias -> version

From Python: :func:`serve_on_ray` starts (or joins) Ray and deploys; :func:`update_ray` changes the
user_config. On a cluster: ``serve deploy serve-config.yaml`` with :func:`app_builder` as import path.

Every replica requires nbdeploy's bearer token unless Ray's HTTP proxy listens on loopback only
(:func:`replica_token`): Ray Serve config files bind the proxy to every interface by default.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Any

from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.serve.config import ServeConfig
from nbdeploy.store import Store, open_store

log = logging.getLogger("nbdeploy.server")

APP_NAME = "nbdeploy"
DEPLOYMENT_NAME = "nbdeploy"
IMPORT_PATH = "nbdeploy.serve.ray:app_builder"
MAX_ONGOING_REQUESTS = 256  # Ray's default of 5 queues requests a single ORT call answers in microseconds
INSTALL_HINT = "pip install 'nbdeploy[ray]'"
NETWORK_WARNING = (
    "Ray opens ports on all network interfaces of every node (GCS, raylets, object store, workers), "
    "not only the HTTP port: run it on a private network behind a firewall, keep Ray's token "
    "authentication on (RAY_AUTH_MODE), and require nbdeploy's token on the endpoint (require_token)."
)
_deployed: dict[str, dict[str, Any]] = {}  # app name -> the application config this process deployed


class RayExposureWarning(UserWarning):
    """Ray listens on every interface; see :data:`NETWORK_WARNING`."""


def _serve() -> Any:
    """``ray.serve``, with usage stats off; a clear error when Ray is not installed."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        from ray import serve
    except ImportError as exc:
        raise NbdeployError(f"Ray Serve is not installed ({exc}); install it with {INSTALL_HINT}", 500) from None
    return serve


class PinnedStore:
    """The store as a replica sees it: what to serve comes from the user_config, not from polling.

    Everything else (version records, files) is read from the real store. The generation stays at
    the one last configured, so the app's store follower never swaps on its own, and served states
    are not written back (Ray reports replica health; several replicas would overwrite each other).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._models: dict[str, dict[str, int]] | None = None
        self._generation = store.generation()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def pin(self, user_config: dict[str, Any] | None) -> None:
        config = dict(user_config or {})
        unknown = set(config) - {"generation", "models"}
        if unknown:
            raise InvalidInput(f"unknown user_config keys {sorted(unknown)}; use 'generation' or 'models'")
        models = config.get("models")
        if models is not None:
            if not isinstance(models, dict) or not all(isinstance(a, dict) for a in models.values()):
                raise InvalidInput("user_config 'models' must map model names to {alias: version}")
            self._models = {str(n): {str(a): int(v) for a, v in al.items()} for n, al in models.items()}
        else:
            self._models = None
        generation = config.get("generation")
        self._generation = int(generation) if generation is not None else self._store.generation()

    def generation(self) -> int:
        return self._generation

    def serving_models(self) -> list[str]:
        return sorted(self._models) if self._models is not None else self._store.serving_models()

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._models.get(name, {})) if self._models is not None else self._store.aliases(name)

    def report_served(self, *args: Any, **kwargs: Any) -> None:
        return None


def replica_token(store: Store, require_token: bool | None, proxy_host: str | None) -> str | None:
    """The bearer token a replica requires, or ``None`` for none.

    The token is on whenever Ray's HTTP proxy is not bound to loopback (``proxy_host``; ``None``
    when it cannot be told, which counts as not loopback). ``require_token=True`` turns it on for a
    loopback proxy too; ``require_token=False`` is refused for a proxy that is not on loopback.
    The token is ``NBDEPLOY_TOKEN`` (the same on every node; at least 32 characters), else the
    store's token file (a shared store).
    """
    from nbdeploy.serve.security import check_token, is_loopback, load_or_create_token  # Starlette: only here

    exposed = proxy_host is None or not is_loopback(proxy_host)
    if require_token is False and exposed:
        where = f"listens on {proxy_host}" if proxy_host else "may listen beyond loopback (it could not be asked)"
        raise InvalidInput(f"require_token is false but Ray's HTTP proxy {where}: nbdeploy requires its token "
                           "there; drop require_token, or bind the proxy to 127.0.0.1 (http_options.host)")
    if not (exposed or require_token):
        return None
    configured = os.environ.get("NBDEPLOY_TOKEN")
    if configured is None:
        return load_or_create_token(store.home)
    return check_token(configured.strip())  # the server's one rule for a token


def _proxy_host() -> str | None:
    """Where this Serve instance's HTTP proxies listen, asked of its controller; ``None`` if unknown."""
    try:
        import ray

        if not ray.is_initialized():  # asking would start a Ray of its own
            return None
        from ray.serve.context import _get_global_client

        host = _get_global_client().http_config.host
    except Exception:  # any failure to ask: unknown, so the token stays on
        return None
    return str(host) if host else None


def replica_app(home: str, config: dict[str, Any] | None = None, require_token: bool | None = None,
                allow_hosts: list[str] | tuple[str, ...] = (),
                prediction_log: bool | None = None) -> tuple[PinnedStore, Any]:
    """What one replica serves: the plain server's app over a :class:`PinnedStore` of ``home``,
    behind the token :func:`replica_token` decides for where Ray's proxy listens.

    ``prediction_log`` (default: on for a PostgreSQL store, off for a directory): every replica, on
    every node, logs into a PostgreSQL store's one database; replicas on several nodes cannot share a
    SQLite ``log.db`` unless it sits on a shared volume, and SQLite over a network file system is fragile."""
    from nbdeploy.serve.app import create_app
    from nbdeploy.serve.security import LOOPBACK_HOSTS
    from nbdeploy.serve.server import make_sink
    from nbdeploy.store.events import NullSink

    store = Store(home)
    view = PinnedStore(store)
    token = replica_token(store, require_token, _proxy_host())
    hosts = frozenset(LOOPBACK_HOSTS | {h.lower() for h in allow_hosts})
    if prediction_log is None:
        prediction_log = store.where.is_postgres
    sink = make_sink(store, process=False) if prediction_log else NullSink()  # a replica keeps to its process
    app = create_app(view, config=ServeConfig(**(config or {})), sink=sink,  # type: ignore[arg-type]
                     token=token, hosts=hosts, poll_seconds=1.0)
    view.pin(None)
    app.state.runtime.sync(True)
    return view, app


@functools.cache
def deployment_class() -> Any:
    """The Ray Serve deployment (built on first use, so importing this module never needs Ray)."""
    serve = _serve()

    @serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=MAX_ONGOING_REQUESTS)
    @serve.ingress()
    class NbdeployDeployment:
        """One replica: :func:`replica_app`, updated by ``reconfigure``."""

        def __init__(self, home: str, **args: Any) -> None:
            self.view, self.nb_app = replica_app(home, **args)

        def __serve_build_asgi_app__(self) -> Any:
            return self.nb_app

        def reconfigure(self, user_config: dict[str, Any]) -> None:
            """A new user_config: load what it names beside what serves now, then swap."""
            self.view.pin(user_config)
            self.nb_app.state.runtime.sync(True)
            failed = self.nb_app.state.runtime.failed
            if failed:
                log.warning("versions that did not load (their aliases keep serving the previous one): %s", failed)

    return NbdeployDeployment


def app_builder(args: dict[str, Any]) -> Any:
    """The import path for ``serve run``/``serve deploy``: ``args`` has ``home`` (the store or bundle
    on every node) and optionally ``config`` (ServeConfig fields), ``require_token`` (on by itself
    unless the proxy listens on loopback; see :func:`replica_token`), ``allow_hosts``
    (Host names clients use besides loopback) and ``prediction_log`` (see :func:`replica_app`)."""
    args = dict(args)
    home = args.pop("home", None)
    if not home:
        raise InvalidInput("the Ray app needs args.home: the nbdeploy store (its path or PostgreSQL URL) or bundle "
                           "path on every node")
    allowed = {"config", "require_token", "allow_hosts", "prediction_log"}
    if set(args) - allowed:
        raise InvalidInput(f"unknown Ray app args {sorted(set(args) - allowed)}; "
                           f"allowed: home, {', '.join(sorted(allowed))}")
    return deployment_class().bind(str(home), **args)


def application_config(home: str | os.PathLike[str], *, replicas: int = 1, autoscale: dict[str, Any] | None = None,
                       user_config: dict[str, Any] | None = None, name: str = APP_NAME,
                       **args: Any) -> dict[str, Any]:
    """The Serve application config (the ``applications:`` entry of a serve-config YAML)."""
    deployment: dict[str, Any] = {"name": DEPLOYMENT_NAME, "max_ongoing_requests": MAX_ONGOING_REQUESTS}
    if autoscale:
        deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": max(replicas, 2),
                                            "target_ongoing_requests": 64, **autoscale}
    else:
        if replicas < 1:
            raise InvalidInput(f"replicas must be at least 1, got {replicas}")
        deployment["num_replicas"] = replicas
    if user_config is not None:
        deployment["user_config"] = user_config
    return {"name": name, "route_prefix": "/", "import_path": IMPORT_PATH,
            "args": {"home": str(home), **args}, "deployments": [deployment]}


def serve_on_ray(home: str | os.PathLike[str] | None = None, *, replicas: int = 1,
                 autoscale: dict[str, Any] | None = None, address: str | None = None, host: str = "127.0.0.1",
                 port: int = 8000, name: str = APP_NAME, **args: Any) -> str:
    """Serve the store at ``home`` on Ray (a local one, or the cluster at ``address``); returns the URL.

    ``replicas`` fixed replicas, or ``autoscale`` (Ray ``autoscaling_config`` fields, e.g.
    ``{"min_replicas": 1, "max_replicas": 8}``). Returns when every replica serves. Change what is
    served with :func:`update_ray` (a reconfigure, not a redeploy).
    """
    serve = _serve()
    import ray
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import LoggingConfig

    from nbdeploy.serve.security import is_loopback

    store = open_store(home)
    warnings.warn(NETWORK_WARNING, RayExposureWarning, stacklevel=2)
    if not is_loopback(host):
        replica_token(store, args.get("require_token"), host)  # refuse require_token=False here, before Ray starts
        args.setdefault("require_token", True)
        args.setdefault("allow_hosts", [host])
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options=HTTPOptions(host=host, port=port),
                logging_config=LoggingConfig(enable_access_log=False, log_level="WARNING"))
    config = application_config(store.location, replicas=replicas, autoscale=autoscale, name=name,
                                user_config={"generation": store.generation()}, **args)
    _deploy(config)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def update_ray(home: str | os.PathLike[str] | None = None, *, models: dict[str, dict[str, int]] | None = None,
               name: str = APP_NAME) -> dict[str, Any]:
    """Make the Ray replicas serve what the store says now, or the explicit ``models`` map
    (``{"iris": {"production": 3}}``). Only the user_config changes, so Ray reconfigures the running
    replicas in place; returns when the application is running again. Returns the new user_config."""
    config = _deployed.get(name)
    if config is None:
        raise NbdeployError(f"no Ray application {name!r} was deployed from this process; call serve_on_ray first", 409)
    if models is not None:
        user_config: dict[str, Any] = {"models": models}
    else:
        user_config = {"generation": open_store(home or config["args"]["home"]).generation()}
    deployment = {**config["deployments"][0], "user_config": user_config}
    _deploy({**config, "deployments": [deployment]})
    return user_config


def _deploy(config: dict[str, Any]) -> None:
    """Deploy as ``serve deploy`` does (the code version comes from the config, so a changed
    user_config is a lightweight update), and wait until the application runs."""
    import time

    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema(applications=[config]), _blocking=False)
    _deployed[config["name"]] = config
    user_config = config["deployments"][0].get("user_config")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = _serve().status().applications.get(config["name"])
        if status is not None and status.status == "RUNNING" and _applied(config["name"], status, user_config):
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise NbdeployError(f"Ray could not deploy {config['name']!r}: {status.message}", 500)
        time.sleep(0.1)
    raise NbdeployError(f"Ray application {config['name']!r} did not become ready in 300 s", 504)


def _applied(name: str, status: Any, user_config: Any) -> bool:
    """Every replica of the deployment runs with this user_config (Ray reports RUNNING only after
    an update completes, but the status may still be the previous one just after deploy_apps)."""
    deployment = status.deployments.get(DEPLOYMENT_NAME)
    if deployment is None or deployment.status != "HEALTHY":
        return False
    try:
        from ray.serve.context import _get_global_client

        details = _get_global_client().get_serve_details()
        app = details["applications"][name]
        target = app["deployments"][DEPLOYMENT_NAME]["deployment_config"].get("user_config")
        replicas = app["deployments"][DEPLOYMENT_NAME]["replicas"]
    except Exception:  # details are best effort: fall back on the status alone
        return True
    return target == user_config and all(r.get("state") == "RUNNING" for r in replicas)


def shutdown_ray() -> None:
    """Stop Serve (the applications this process deployed) but not Ray itself."""
    serve = _serve()
    serve.shutdown()
    _deployed.clear()


__all__ = ["IMPORT_PATH", "PinnedStore", "RayExposureWarning", "app_builder",
           "application_config", "deployment_class", "replica_app", "replica_token", "serve_on_ray", "shutdown_ray",
           "update_ray"]

