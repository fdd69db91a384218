"""The workflow in plain Python: deploy a fitted model, find deployments, call and stop them.

Everything the ``%deploy`` magic does is one call into this module, so it all works without IPython.
Moving an alias is a write to the store; the server (when one runs) catches up before these return.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdeploy import exporters
from nbdeploy.convert.fidelity import MAX_DIFF, MIN_AGREEMENT
from nbdeploy.deployment import Deployment
from nbdeploy.display.alerts import AlertHistory
from nbdeploy.display.registry import RegistryTable
from nbdeploy.errors import Conflict, InvalidInput, NbdeployError, NotFound
from nbdeploy.serve import process
from nbdeploy.store import PRODUCTION, SHADOW, Store, check_name, open_store, removal, upgrading
from nbdeploy.store import alerts as alert_store
from nbdeploy.store.registry import version_states
from nbdeploy.store.removal import Removal
from nbdeploy.store.upgrading import Upgrade

if TYPE_CHECKING:
    from nbdeploy.lifecycle.evaluation import EvaluationResult
    from nbdeploy.lifecycle.retraining import RetrainResult
    from nbdeploy.lifecycle.training import TrainResult

# The lifecycle (scikit-learn, pandas, scipy) is imported by the functions that need it, so managing a
# store (models, get, stop, shutdown: `nbdeploy list` in an exported bundle) works without scikit-learn.


def deploy(model: Any, sample: Any, name: str, *, test: Any = None, home: str | None = None,
           port: int | None = None, force: bool = False, min_score: float | None = None,
           tolerance: float = 0.0, min_agreement: float = MIN_AGREEMENT,
           max_diff: float = MAX_DIFF) -> Deployment:
    """Convert ``model`` to ONNX, check it, store it as a new version, and serve it.

    ``sample`` fixes the input schema. ``test`` is held-out data: ``(X, y)`` judges the new
    version through the promotion gate against the current production version (so does a run
    recorded by :func:`train` for this model); ``X`` alone is used for the fidelity check only.
    A refused version stays registered and :class:`GateRefused` is raised. Returns once the
    server answers with the new version.

    Every deploy first checks that the ONNX model predicts what ``model`` predicts on the held-out
    ``X`` (else the sample): labels agree on at least ``min_agreement`` of the rows and probabilities
    (regression: values, relative to ``max(|y|, 1)``) differ by at most ``max_diff``. Double precision
    is used by itself when only it passes; when no conversion passes, :class:`FidelityRefused` is
    raised and nothing is stored, unless ``force``.
    """
    from nbdeploy.lifecycle.promotion import GateRefused
    from nbdeploy.lifecycle.registration import register

    started = time.perf_counter()
    store = Store(home)
    _check_port(store, port)
    candidate = register(model, sample, name, test=test, store=store, force=force, min_score=min_score,
                         tolerance=tolerance, min_agreement=min_agreement, max_diff=max_diff)
    if candidate.refused:
        assert candidate.decision is not None
        raise GateRefused(name, candidate.version, candidate.decision)
    converted_at = time.perf_counter()
    store.set_alias(name, PRODUCTION, candidate.version)
    store.set_serving(name, True)
    _catch_up(store, start=True, port=port)
    _check_loaded(store, name, candidate.version)
    done = time.perf_counter()
    timings = {"convert_s": converted_at - started, "serve_s": done - converted_at, "total_s": done - started}
    return Deployment(name=name, home=store.location, fidelity=candidate.fidelity, timings=timings,
                      gate=candidate.decision)


def _check_loaded(store: Store, name: str, version: int) -> None:
    state, error = store.served().get((name, version), ("missing", "the server did not load it"))
    if state != "ready":
        raise NbdeployError(f"the server could not load {name!r} version {version}: {error}", 500)


def _check_port(store: Store, port: int | None) -> None:
    """A port asked for while the store's server listens on another cannot be honoured: say so first."""
    record = process.running_server(store) if port else None
    if record is not None and record.port != port:
        raise InvalidInput(f"the store's server already listens on port {record.port}, so port {port} cannot be "
                           "used; deploy without a port, or shut the server down first (%deploy shutdown, "
                           "nbdeploy.shutdown())")


def _catch_up(store: Store, *, start: bool = False, port: int | None = None) -> None:
    """The running server (a new one when ``start``) has applied what the store says now."""
    if start or store.server() is not None:
        generation = store.generation()
        process.ensure_server(store, port)
        process.wait_applied(store, generation)


def deployments(home: str | None = None) -> list[Deployment]:
    """The models this store serves (also from a new kernel: the server keeps running)."""
    store = open_store(home)
    return [Deployment(name=name, home=store.location) for name in store.serving_models()]


def get(name: str, home: str | None = None) -> Deployment:
    """The handle of a stored model (served or not)."""
    store = open_store(home)
    store.require_model(name)
    return Deployment(name=name, home=store.location)


def stop(name: str, home: str | None = None) -> None:
    """Stop serving ``name``; the server exits when it serves nothing else. Versions stay stored."""
    get(name, home).stop()


def shutdown(home: str | None = None) -> bool:
    """Stop the store's server process, if one runs (False when none does, or there is no store).
    Models stay registered."""
    try:
        store = open_store(home)
    except NotFound:
        return False  # nothing was ever served from there; and no store is made to say so
    return process.stop_server(store)


def delete(name: str, version: int | str | None = None, *, alias: str | None = None, force: bool = False,
           home: str | None = None) -> Removal:
    """Delete ``version`` of ``name``, or only its ``alias``, or (with neither) the whole model.

    A version goes with its files and its logged predictions, feedback and rollups; a whole model with
    every version, run and log row. What an alias points at is refused unless ``force``: then the aliases
    pointing at it go too, and without ``production`` the model is no longer served (a running server
    stops answering for it without a restart; it exits when it serves nothing else). Version numbers
    are never given again. Returns what was removed (printable).
    """
    store = open_store(home)
    return _remove(store, [removal.plan_delete(store, name, version, alias=alias, force=force)])[0]


def prune(name: str | None = None, *, keep: int, dry_run: bool = False, home: str | None = None) -> list[Removal]:
    """Keep the newest ``keep`` versions of each model (or of ``name``) and every version an alias points
    at; delete the others as :func:`delete` does. ``dry_run`` only says what would go. Returns one
    :class:`Removal` per model that had something to remove."""
    store = open_store(home)
    plans = removal.plan_prune(store, name, keep=keep)
    return plans if dry_run else _remove(store, plans)


def _remove(store: Store, plans: list[Removal]) -> list[Removal]:
    done = []
    for plan in plans:
        if plan.stops_serving and plan.name in store.serving_models():
            Deployment(name=plan.name, home=store.location).stop()  # the server lets it go before its files do
        done.append(removal.remove(store, plan))
    if process.running_server(store):
        process.wait_applied(store, store.generation())
        # answers given just before the server let go of a version may still sit in its log writer's queue
        done = [removal.sweep_log(store.location, plan) for plan in done]
    return done


def upgrade(home: str | None = None) -> Upgrade:
    """Bring the store at ``home``, made by an older nbdeploy, to this nbdeploy's format, in place (a copy
    of its database is kept first); see docs/upgrading.md. Returns what it did (printable)."""
    return upgrading.upgrade(home)


def serve(name: str, *, home: str | None = None, port: int | None = None) -> Deployment:
    """Serve a stopped model again (its production version), starting the server when none runs."""
    store = open_store(home)
    store.require_model(name)
    _check_port(store, port)
    return Deployment(name=name, home=store.location).serve(port)


def train(estimator: Any, X: Any, y: Any, name: str, *, test_size: float = 0.2, stratify: bool = False,
          cv: int | None = None, seed: int = 0, home: str | None = None) -> TrainResult:
    """Split, fit a clone, evaluate on the held-out part, and record the run in the store.

    Deploying the returned ``result.model`` later uses this run's held-out rows for the
    promotion gate and its training rows as the drift reference.
    """
    from nbdeploy.lifecycle.registration import record_run
    from nbdeploy.lifecycle.training import train as _train

    check_name(name)
    result = _train(estimator, X, y, test_size=test_size, stratify=stratify, cv=cv, seed=seed)
    record_run(Store(home), name, result)
    return result


def test(model: Any, X: Any, y: Any, *, version: int | str | None = None, name: str | None = None,
         home: str | None = None) -> EvaluationResult:
    """Evaluate on labelled rows: a fitted model as it is, or a stored model (its name) as it is served.

    ``version`` (stored models only) is a version number or an alias (default: production);
    ``name`` labels the report of a fitted model.
    """
    from nbdeploy.lifecycle.evaluation import evaluate
    from nbdeploy.lifecycle.promotion import evaluate_stored as evaluate_version

    if isinstance(model, str):
        return evaluate_version(Store(home).resolve(model, version), X, y)
    if version is not None:
        raise InvalidInput("version= applies to a stored model (pass its name), not to a fitted model")
    return evaluate(model, X, y, name=name)


def promote(name: str, version: int, alias: str = PRODUCTION, *, min_score: float | None = None,
            tolerance: float = 0.0, force: bool = False, home: str | None = None) -> Deployment:
    """Point ``alias`` at ``version``. For ``production`` the gate judges it on its held-out data."""
    from nbdeploy.lifecycle.promotion import promote as _promote

    store = Store(home)
    decision = _promote(store, name, int(version), alias, min_score=min_score, tolerance=tolerance, force=force)
    if alias == PRODUCTION:
        store.set_serving(name, True)
    _catch_up(store, start=alias == PRODUCTION)
    return Deployment(name=name, home=store.location, gate=decision)


def retrain(name: str, *, data: tuple[Any, Any] | None = None, with_feedback: bool = False,
            promote: bool = False, recent: float = 0.3, min_score: float | None = None,
            tolerance: float = 0.0, home: str | None = None) -> RetrainResult:
    """Fit a fresh clone of ``name``'s production pipeline, register it, and promote it when asked.

    See :func:`nbdeploy.lifecycle.retraining.retrain` for the data. The new version is promoted
    only when ``promote`` is set and the gate passed on recent labelled traffic (with no recent
    labels there is nothing to judge it on: ``result.reason`` says so); the endpoint then swaps
    with no downtime.
    """
    from nbdeploy.lifecycle import retraining

    result = retraining.retrain(name, data=data, with_feedback=with_feedback, recent=recent,
                                min_score=min_score, tolerance=tolerance, home=home)
    if promote and result.decision is not None and result.decision.passed:
        store = Store(home)
        store.set_alias(name, PRODUCTION, result.version)  # judged just now: no second gate
        store.set_serving(name, True)
        _catch_up(store, start=True)
        result.promoted, result.reason = True, ""
    return result


def shadow(name: str, version: int | None, *, home: str | None = None) -> Deployment:
    """Send a copy of ``name``'s live traffic to ``version`` too (None stops it).

    Clients only ever get production's answer; the shadow's answers are logged beside them and the
    monitor shows how often the two agree. The gate is not involved: nothing is promoted.
    """
    store = Store(home)
    store.require_model(name)
    if version is None:
        store.remove_alias(name, SHADOW)
    else:
        store.version(name, int(version))
        store.set_alias(name, SHADOW, int(version))
    _catch_up(store)
    return Deployment(name=name, home=store.location)


def canary(name: str, version: int | str | None = None, *, percent: float = 10.0, key: str | None = None,
           promote_after: int | None = None, guards: dict[str, Any] | None = None, stop: bool = False,
           home: str | None = None) -> dict[str, Any]:
    """Send ``percent`` % of ``name``'s un-versioned requests to ``version``, guarded; ``stop=True`` ends it.

    Requests are bucketed by the value of header ``key`` (default ``X-Client-ID``; at random without
    one), so a client stays on one arm. The server's guards (``guards=`` overrides the defaults of
    :data:`nbdeploy.monitor.canary.DEFAULT_GUARDS`) compare the canary's error rate, p99 latency and
    accuracy (realised, and estimated before labels) with production's, and abort it by themselves on
    a breach: all traffic back to production, and an ``ALERT`` recorded. With ``promote_after``, a canary
    that answered that many requests within its guards becomes production (a rollback undoes it),
    provided the promotion gate, run here first on the version's labelled held-out rows, passed or had
    nothing to judge. Returns once the server routes to it: the canary's status (as
    ``Deployment.health()["canary"]``), whose ``promotion`` says what the gate decided.
    """
    from nbdeploy.lifecycle.promotion import judge_stored
    from nbdeploy.monitor.canary import canary_snapshot, guard_thresholds
    from nbdeploy.store.canary import ABORTED, STOPPED, check_canary, end_canary, start_canary
    from nbdeploy.store.reader import LogReader

    store = open_store(home)
    store.require_model(name)
    if stop:
        if version is not None:
            raise InvalidInput("stop=True (--stop) ends the running canary: give no version")
        if end_canary(store, name, STOPPED, "stopped by the user") is None:
            raise Conflict(f"model {name!r} has no canary running")
        _catch_up(store)
    else:
        if version is None:
            raise InvalidInput("give the version to run as a canary (or stop=True / --stop to end the running one)")
        record = store.version(name, version)  # a number or its digits; NotFound naming the versions
        thresholds = guard_thresholds(guards)
        check_canary(store, name, record.version, percent, promote_after, key)  # before the gate's work
        decision = judge_stored(store, record)  # None: no labelled held-out rows, nothing to gate on
        start_canary(store, name, record.version, percent, key=key, promote_after=promote_after, guards=thresholds,
                     gate=None if decision is None else decision.to_dict())
        try:
            _catch_up(store, start=True)
            _check_loaded(store, name, record.version)
        except NbdeployError as exc:  # production keeps all traffic; the canary is recorded as never having run
            end_canary(store, name, ABORTED, f"the server could not serve it: {exc.message}")
            _catch_up(store)
            raise
    with LogReader(store.location) as reader:
        return canary_snapshot(store, reader, name)


def rollback(name: str, *, alias: str = PRODUCTION, home: str | None = None) -> Deployment:
    """Serve the version ``alias`` had before its last move (repeat to go further back)."""
    from nbdeploy.lifecycle.promotion import rollback as _rollback

    store = Store(home)
    _rollback(store, name, alias)
    _catch_up(store)
    return Deployment(name=name, home=store.location)


def models(home: str | None = None) -> RegistryTable:
    """Every model in the store: each version and its state, aliases, status, URL and the key metric.

    The one view of a store: ``%deploy list`` and ``nbdeploy list`` show this. Version states:
    ``serving`` (production, shadow or canary of a served model), ``stopped`` (production of a stopped model),
    ``refused`` (the promotion gate refused it), ``registered`` (stored, not served).
    """
    return RegistryTable(_registry_rows(open_store(home)))


def _registry_rows(store: Store) -> list[dict[str, Any]]:
    """The rows of :func:`models` (the models panel refreshes them too)."""
    server = process.running_server(store)
    served = store.served() if server else {}
    serving = set(store.serving_models())
    rows = []
    for name in store.model_names():
        versions = store.versions(name)
        aliases = store.aliases(name)
        production = aliases.get(PRODUCTION)
        meta = next((v.meta for v in versions if v.version == production), {})
        metrics = (meta.get("metrics") or {})
        primary = metrics.get("primary_metric")
        score = (metrics.get("metrics") or {}).get(primary) if primary else None
        if name not in serving:
            status = "stopped"
        elif server is None:
            status = "server down"
        else:
            status = served.get((name, production or -1), ("starting", None))[0]
        states = version_states(versions, aliases, name in serving)
        rows.append({
            "name": name, "versions": [v.version for v in versions], "states": states,
            "refused": [v.version for v in versions if v.status == "refused"], "aliases": aliases,
            "status": status, "url": f"{server.url}/v2/models/{name}" if server and name in serving else None,
            "metric": primary, "score": score,
        })
    return rows


def monitor(name: str, *, interval: float = 3.0, sidecar: bool = False, home: str | None = None,
            **options: Any) -> Any:
    """The live monitor widget of ``name`` (see :meth:`Deployment.monitor`)."""
    return get(name, home).monitor(interval=interval, sidecar=sidecar, **options)


def report(name: str, to: str | os.PathLike[str] | None = None, *, since: Any = None,
           home: str | None = None) -> Any:
    """One self-contained HTML page of ``name``'s history: versions with their metrics, fidelity and gate
    decisions; quality, drift, traffic and latency over time with every deploy, retrain, promotion,
    rollback, canary and alert marked; the alerts and canaries. From the first deploy, or ``since`` (a time).

    With ``to``, writes the page there and returns its path; else returns the report, which shows inline.
    Charts are inlined as PNG and the page links to nothing, so it opens offline.
    """
    from nbdeploy.display.history import report as render
    from nbdeploy.monitor.timeline import history
    from nbdeploy.store.reader import LogReader

    store = open_store(home)
    with LogReader(store.location) as log:
        page = render(history(store, name, log, since=since))
    if to is None:
        return page
    try:
        return page.save(to)
    except OSError as exc:  # a folder that does not exist, no permission: say so, in one line
        raise InvalidInput(f"cannot write the report to {os.fspath(to)}: {exc.strerror or exc}") from None


NOT_GIVEN: Any = object()  # ``alerts(name)`` leaves the webhook as it is; ``webhook=None`` clears it


def alerts(name: str, *, webhook: str | None = NOT_GIVEN, limit: int = 50, home: str | None = None) -> AlertHistory:
    """The latest ``limit`` alerts of ``name`` as the server recorded them, and where they are sent.

    ``webhook=URL`` (http:// or https://) has the server POST each alert raised from now on to URL as
    JSON; ``webhook=None`` stops sending. The server judges the levels whether or not a notebook is
    open (see docs/user-guide.md, "Alerts").
    """
    store = open_store(home)
    store.require_model(name)
    if webhook is not NOT_GIVEN:
        alert_store.set_webhook(store, name, webhook)
    hook = alert_store.webhook(store, name)
    rows = [a.to_dict() for a in alert_store.alerts(store, name, limit=limit)]
    return AlertHistory(name, rows, alert_store.redact(hook.url) if hook else None)


def stop_monitors(name: str | None = None) -> int:
    """Stop this kernel's live monitors of ``name`` (or all), leaving their last state; returns how many."""
    from nbdeploy.display.monitor import stop_monitors as stop_widgets

    return stop_widgets(name)


def panel(home: str | None = None, *, interval: float = 5.0, inline: bool = False) -> Any:
    """Every model of the store, live, in JupyterLab's side area: status light, versions and aliases, requests
    per minute over the last hour, the last alert, a running canary's progress; buttons open the monitor,
    roll production back and stop a canary.

    Refreshes every ``interval`` seconds from a background thread until stopped (its Stop button,
    :func:`stop_panels`). Shown in the notebook instead when ``inline``, when the ``sidecar`` package is
    missing, or outside JupyterLab (with a note saying so). One panel per store in a kernel.
    """
    from nbdeploy.display.panel import PanelActions, models_panel
    from nbdeploy.monitor.overview import Overview

    if not interval > 0:
        raise InvalidInput(f"interval must be a positive number of seconds, got {interval}")
    store = open_store(home)
    path = store.location  # what reopens the store (a URL keeps its password: never shown)
    overview = Overview(store)
    cache: dict[str, Any] = {}

    def fetch() -> list[dict[str, Any]]:
        # The registry part changes only with the store's generation or the server: re-read it only then.
        record = process.recorded_server(store)
        key = (store.generation(), record and (record.pid, record.applied))
        if cache.get("key") != key:
            rows = _registry_rows(store)
            for row in rows:
                row["previous"] = store.previous_version(row["name"])
            cache.update(key=key, rows=rows)
        return overview.rows(cache["rows"])

    def roll_back(name: str) -> str:
        return f"production → v{rollback(name, home=path).version}"

    def stop_canary(name: str) -> str:
        canary(name, stop=True, home=path)
        return "canary stopped: production answers every request again"

    actions = PanelActions(monitor=lambda name: monitor(name, home=path), rollback=roll_back, stop_canary=stop_canary)
    return models_panel(fetch, actions, key=path, interval=interval, inline=inline, on_stop=overview.close)


def stop_panels() -> int:
    """Stop this kernel's live models panels, leaving their last state; returns how many."""
    from nbdeploy.display.panel import stop_panels as stop_widgets

    return stop_widgets()


def export(name: str, to: str, directory: str | os.PathLike[str], *, version: int | str | None = None,
           home: str | os.PathLike[str] | None = None, **options: Any) -> Path:
    """Write ``name`` (default: its production version) for another platform; see :mod:`nbdeploy.exporters`.

    ``to`` is one of ``bundle``, ``docker``, ``triton``, ``kserve``, ``ray``; ``version`` a version
    number or an alias; ``options`` are the format's own (``hashes=True`` for bundle, docker and ray;
    ``base_image=`` for docker). Returns the directory, written whole or not at all.
    """
    return exporters.export(name, to, directory, version=version, home=home, **options)


def serve_on_ray(home: str | None = None, *, model: str | None = None, replicas: int = 1,
                 autoscale: str | None = None, address: str | None = None, port: int = 8000) -> str:
    """Serve the whole store on Ray Serve: a local Ray, or the cluster at ``address``.

    ``replicas`` fixed replicas, or ``autoscale="MIN,MAX"`` replicas. Returns the endpoint of
    ``model`` (checked before Ray starts), else the base URL. Needs ``pip install 'nbdeploy[ray]'``.
    """
    if model is not None:
        Store(home).require_model(model)  # "did you mean", before Ray starts
    scaling = parse_autoscale(autoscale)
    from nbdeploy.serve.ray import serve_on_ray as start

    url = start(home, replicas=replicas, autoscale=scaling, address=address, port=port)  # opens, never creates
    return f"{url}/v2/models/{model}" if model else url


def parse_autoscale(text: str | None) -> dict[str, int] | None:
    """``"MIN,MAX"`` as Ray's ``autoscaling_config`` fields (``None`` stays ``None``)."""
    if text is None:
        return None
    try:
        low, high = (int(v) for v in str(text).split(","))
    except ValueError:
        raise InvalidInput(f"autoscale takes MIN,MAX replicas (two whole numbers, e.g. '1,4'), got {text!r}") from None
    if not 0 <= low <= high or high < 1:
        raise InvalidInput(f"autoscale needs 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return {"min_replicas": low, "max_replicas": high}
