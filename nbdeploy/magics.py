"""``%deploy``: parse the line, look names up in the user's namespace, make one call into the API.

Errors are one-line ``UsageError``s with "did you mean" suggestions; nothing here holds logic
that the Python API lacks. The help (``%deploy?``, ``%deploy --help``, ``%deploy SUB --help``)
and docs/magics.md are rendered from the same parsers.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import display
from traitlets import Int, Unicode

from nbdeploy import api
from nbdeploy.convert.fidelity import MAX_DIFF, MIN_AGREEMENT
from nbdeploy.errors import NbdeployError, UnknownName, did_you_mean
from nbdeploy.lifecycle.promotion import GateRefused

HELP_FLAGS = ("-h", "--help")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting the kernel."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _parser(command: str, description: str) -> _Parser:
    prog = "%deploy" if command == "deploy" else f"%deploy {command}"
    return _Parser(prog=prog, add_help=False, description=description)


def build_parsers() -> dict[str, argparse.ArgumentParser]:
    """One parser per subcommand (``deploy`` is the bare ``%deploy MODEL``); the help and the docs
    are rendered from them. Help texts leave defaults out: the renderers add them."""
    parsers: dict[str, argparse.ArgumentParser] = {}
    p = _parser("deploy", "Convert, store and serve a fitted model.")
    p.add_argument("model", help="variable holding a fitted scikit-learn estimator or pipeline")
    p.add_argument("--name", required=True, help="model name in the store (letters, digits, '.', '-', '_')")
    p.add_argument("--sample", required=True, help="variable with sample input (DataFrame or 2-D array)")
    p.add_argument("--test", nargs="+", metavar="VAR", help="held-out X [y] for the fidelity check")
    p.add_argument("--port", type=int, help="port for a new server (default: a free one)")
    p.add_argument("--force", action="store_true",
                   help="deploy even if the fidelity check or the promotion gate refuses it")
    p.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                   help="fidelity: share of rows where ONNX and scikit-learn labels must agree")
    p.add_argument("--max-diff", type=float, default=MAX_DIFF,
                   help="fidelity: largest probability (regression: relative) difference")
    _gate_options(p)
    parsers["deploy"] = p
    p = _parser("train", "Split, fit, evaluate on the held-out part and record a run.")
    p.add_argument("estimator", help="variable holding a scikit-learn estimator or pipeline (fitted in place)")
    p.add_argument("X", help="variable with the features")
    p.add_argument("y", help="variable with the labels or targets")
    p.add_argument("--name", required=True, help="model name the run is recorded under")
    p.add_argument("--test-size", type=float, default=0.2, help="held-out share")
    p.add_argument("--stratify", action="store_true", help="keep class proportions in the split")
    p.add_argument("--cv", type=int, help="also cross-validate on the training part with K folds")
    p.add_argument("--seed", type=int, default=0, help="random seed for the split and the estimator")
    parsers["train"] = p
    p = _parser("test", "Evaluate a model on labelled data (a report).")
    p.add_argument("model", help="variable holding a fitted model, or the name of a stored model")
    p.add_argument("X", help="variable with the features")
    p.add_argument("y", help="variable with the labels or targets")
    p.add_argument("--version", help="stored version or alias to test (default: production)")
    parsers["test"] = p
    p = _parser("promote", "Point an alias (default production) at a version.")
    p.add_argument("name", help="model name")
    p.add_argument("version", type=int, help="version number")
    p.add_argument("--alias", default="production", help="alias to move")
    p.add_argument("--force", action="store_true", help="promote even if the gate refuses it")
    _gate_options(p)
    parsers["promote"] = p
    p = _parser("rollback", "Serve the previous production version again.")
    p.add_argument("name", help="model name")
    parsers["rollback"] = p
    p = _parser("retrain", "Fit a fresh clone of the production pipeline; judge it on recent labels.")
    p.add_argument("name", help="model name")
    p.add_argument("--data", nargs=2, metavar=("X", "Y"),
                   help="training data (default: the rows production was trained on)")
    p.add_argument("--with-feedback", action="store_true",
                   help="also train on labelled production traffic (all but the most recent share)")
    p.add_argument("--recent", type=float, default=0.3,
                   help="share of the newest labelled traffic kept apart to judge the models")
    p.add_argument("--promote", action="store_true", help="promote the new version if it passes the gate")
    _gate_options(p)
    parsers["retrain"] = p
    p = _parser("shadow", "Send a copy of live traffic to another version; only production answers.")
    p.add_argument("name", help="model name")
    p.add_argument("version", type=int, nargs="?", help="version to shadow production with")
    p.add_argument("--stop", action="store_true", help="stop shadowing")
    parsers["shadow"] = p
    p = _parser("canary", "Send a share of live traffic to another version; its guards abort or promote it.")
    p.add_argument("name", help="model name")
    p.add_argument("version", type=int, nargs="?", help="version to run as the canary")
    p.add_argument("--percent", type=float, default=10.0, help="share of un-versioned requests it answers")
    p.add_argument("--key", metavar="HEADER",
                   help="request header whose value keeps a client on one arm (default: X-Client-ID)")
    p.add_argument("--promote-after", type=int, metavar="N",
                   help="promote it after N canary requests within its guards (if the promotion gate passed)")
    p.add_argument("--stop", action="store_true", help="end the running canary: production takes all traffic")
    parsers["canary"] = p
    p = _parser("serve", "Serve a stopped model again from the store's server; with --on ray, serve the store "
                         "on Ray Serve (a local Ray, or the cluster at --address).")
    p.add_argument("name", help="model to serve (on Ray: to show the endpoint of; the whole store is served)")
    p.add_argument("--on", choices=["local", "ray"], default="local",
                   help="local: the store's own server process; ray: Ray Serve")
    p.add_argument("--replicas", type=int, default=1, help="fixed number of replicas")
    p.add_argument("--autoscale", metavar="MIN,MAX", help="autoscale between MIN and MAX replicas instead")
    p.add_argument("--address", help="an existing Ray cluster (default: start a local Ray)")
    p.add_argument("--port", type=int, help="port: for a new local server (default: a free one); Ray Serve's "
                   "HTTP port (default 8000)")
    parsers["serve"] = p
    parsers["list"] = _parser("list", "Every model in the store: versions, aliases, status.")
    p = _parser("stop", "Stop serving a model (the server exits when idle).")
    p.add_argument("name", help="model name")
    parsers["stop"] = p
    parsers["shutdown"] = _parser("shutdown", "Stop the store's server process.")
    p = _parser("monitor", "Live monitor of a served model: status, traffic, latency, quality, drift.")
    p.add_argument("name", help="model name")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between refreshes")
    p.add_argument("--sidecar", action="store_true", help="dock it in a JupyterLab side panel (pip install sidecar)")
    p.add_argument("--stop", action="store_true", help="stop the live monitor of NAME, leaving its last state")
    p.add_argument("--since", metavar="TIME", help="start the charts at TIME, e.g. '2026-12-04 09:00' "
                   "(default: the first deploy)")
    p.add_argument("--window", type=float, metavar="SECONDS", help="chart the last SECONDS instead")
    parsers["monitor"] = p
    p = _parser("report", "One self-contained HTML page of a model's history: versions, metrics, fidelity, gate "
                "decisions, quality and drift over time, alerts, canaries.")
    p.add_argument("name", help="model name")
    p.add_argument("--to", metavar="FILE", help="write the page to FILE (e.g. report.html) instead of showing it")
    p.add_argument("--since", metavar="TIME", help="start at TIME, e.g. '2026-12-04 09:00' (default: the first deploy)")
    parsers["report"] = p
    p = _parser("panel", "Every model in the store, live, in JupyterLab's side area: status, versions, traffic, "
                         "last alert, canary; buttons open the monitor, roll back, stop a canary.")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    p.add_argument("--inline", action="store_true", help="show it in the notebook instead of the side area")
    p.add_argument("--stop", action="store_true", help="stop the live panel, leaving its last state")
    parsers["panel"] = p
    p = _parser("alerts", "The alerts the server recorded for a model (it judges every few seconds, notebook open "
                          "or not); --webhook sends each new one to a URL as a JSON POST.")
    p.add_argument("name", help="model name")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--webhook", metavar="URL", help="POST the model's alerts to this http:// or https:// URL")
    where.add_argument("--no-webhook", action="store_true", help="stop sending the model's alerts")
    parsers["alerts"] = p
    p = _parser("export", "Write a stored version for another platform, with a README of the commands.")
    p.add_argument("name", help="model name")
    p.add_argument("directory", help="new or empty directory to write")
    p.add_argument("--to", required=True, metavar="FORMAT", help="bundle, docker, triton, kserve or ray")
    p.add_argument("--version", help="version number or alias to export (default: production)")
    p.add_argument("--hashes", action="store_true",
                   help="bundle, docker, ray: pin every requirement by sha256 and install with --require-hashes")
    p.add_argument("--base-image", metavar="IMAGE", help="docker: the base image, ideally pinned by @sha256 digest")
    parsers["export"] = p
    p = _parser("delete", "Delete a version, an alias, or (with neither) a whole model, with its files and logged "
                          "predictions. What an alias points at needs --force.")
    p.add_argument("name", help="model name")
    p.add_argument("version", nargs="?", help="version number (default: the whole model)")
    p.add_argument("--alias", help="remove this alias only (the version stays)")
    p.add_argument("--force", action="store_true",
                   help="also delete what an alias points at, removing the alias (production: stops serving)")
    parsers["delete"] = p
    p = _parser("prune", "Delete all but the newest N versions of each model (or of NAME), keeping every version "
                         "an alias points at.")
    p.add_argument("name", nargs="?", help="only this model (default: every model)")
    p.add_argument("--keep", type=int, required=True, metavar="N", help="newest versions to keep per model")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    parsers["prune"] = p
    return parsers


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-score", type=float, help="floor for the held-out metric (accuracy or R²)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="how much worse than production the candidate may score")


PARSERS = build_parsers()
SUBCOMMANDS = tuple(c for c in PARSERS if c != "deploy")


# -- help, for %deploy?, --help and docs/magics.md ---------------------------------------
def _usage(parser: argparse.ArgumentParser, *, short: bool = False) -> str:
    """``%deploy train ESTIMATOR X Y --name NAME [--cv CV] …``; ``short`` keeps what is required."""
    parts = [parser.prog] + [f"[{a.dest.upper()}]" if a.nargs == "?" else a.dest.upper()
                             for a in parser._actions if not a.option_strings]
    for action in parser._actions:
        if not action.option_strings or (short and not action.required):
            continue
        flag = action.option_strings[0]
        metavar = action.metavar or action.dest.upper()
        if isinstance(metavar, tuple):
            metavar = " ".join(metavar)
        text = flag if action.nargs == 0 else f"{flag} {metavar}" + (f" [{metavar}]" if action.nargs == "+" else "")
        parts.append(text if action.required else f"[{text}]")
    if short and any(a.option_strings and not a.required for a in parser._actions):
        parts.append("[options]")
    return " ".join(parts)


def _arguments(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(argument, meaning) rows; the default is added here, once."""
    rows = []
    for action in parser._actions:
        name = ", ".join(action.option_strings) or action.dest.upper()
        shown = action.default not in (None, False) and not action.required
        rows.append((name, (action.help or "") + (f" (default: {action.default})" if shown else "")))
    return rows


def help_text(command: str | None = None) -> str:
    """The help of ``%deploy`` (every subcommand in a line or two), or of one subcommand."""
    if command is None:
        lines = ["%deploy: from a fitted model in a notebook to a monitored endpoint, and back.", ""]
        for parser in PARSERS.values():
            lines += [f"  {_usage(parser, short=True)}", f"      {parser.description}"]
        lines += ["", "%deploy COMMAND --help shows every option of a command. Set defaults once per session",
                  "with %config DeployMagics.port = 9000 and %config DeployMagics.home = '/path/to/store'",
                  "(or a PostgreSQL URL, postgresql://user@host/database)."]
        return "\n".join(lines)
    parser = PARSERS[command]
    rows = _arguments(parser)
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join([f"usage: {_usage(parser)}", "", parser.description or "", "",
                      *(f"  {name:<{width}}  {meaning}" for name, meaning in rows)]).rstrip() + "\n"


def reference_markdown() -> str:
    """The ``%deploy`` reference for docs/magics.md, rendered from the parsers themselves."""
    lines = ["# `%deploy` reference", "",
             "Generated from the magic's own parsers: `python -m nbdeploy.magics > docs/magics.md`.", "",
             "Load the extension with `%load_ext nbdeploy`. Options can be set once per session with",
             "`%config DeployMagics.port = 9000` and `%config DeployMagics.home = '/path/to/store'`.",
             "`%deploy --help` lists the commands; `%deploy COMMAND --help` shows a command's options.", ""]
    for command, parser in PARSERS.items():
        lines += [f"## `{command}`", "", parser.description or "", "", "```", _usage(parser), "```", ""]
        rows = [f"| `{name}` | {meaning} |" for name, meaning in _arguments(parser)]
        if rows:
            lines += ["| argument | meaning |", "|---|---|", *rows, ""]
    return "\n".join(lines)


# -- the magic ----------------------------------------------------------------------------
@magics_class
class DeployMagics(Magics):
    """The ``%deploy`` line magic. ``%config DeployMagics.port = 9000`` sets a default port."""

    port = Int(0, help="Port for a newly started server; 0 picks a free one.").tag(config=True)
    home = Unicode("", help="The store: a directory, or a PostgreSQL URL (postgresql://user@host/database) "
                            "(default: $NBDEPLOY_HOME or ./.nbdeploy).").tag(config=True)

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        shell.configurables.append(self)

    @line_magic
    def deploy(self, line: str) -> Any:
        try:
            tokens = shlex.split(line, comments=True)  # `%deploy list  # a comment`, as in any cell
        except ValueError as exc:
            raise UsageError(f"%deploy: cannot parse the line: {exc}") from None
        if not tokens:
            raise UsageError("%deploy: expected MODEL --name NAME --sample X, or one of: " + ", ".join(SUBCOMMANDS)
                             + " (%deploy --help)")
        if tokens[0] in HELP_FLAGS:
            print(help_text())
            return None
        command = tokens[0] if tokens[0] in SUBCOMMANDS else "deploy"
        rest = tokens if command == "deploy" else tokens[1:]
        if any(t in HELP_FLAGS for t in rest):
            print(help_text(command), end="")
            return None
        if command == "deploy" and not tokens[0].startswith("-") and tokens[0] not in self.shell.user_ns:
            hint = (did_you_mean(tokens[0], [*SUBCOMMANDS, *self._variables()])
                    or " (%deploy --help lists the subcommands)")
            raise UsageError(f"%deploy: {tokens[0]!r} is neither a variable nor a subcommand{hint}")
        parser = PARSERS[command]
        args = parser.parse_args(rest)
        try:
            return getattr(self, f"_{command}")(args)
        except GateRefused as refused:  # the candidate stays registered: show why, raise nothing
            display(refused.decision)
            print(refused.message)
            return None
        except NbdeployError as exc:
            raise UsageError(f"{parser.prog}: {exc.message}") from None

    # -- subcommands: look names up, make one API call, show the result ---------------------
    def _deploy(self, args: argparse.Namespace) -> None:
        model = self._lookup(args.model, "model")
        sample = self._lookup(args.sample, "sample")
        test = None
        if args.test:
            if len(args.test) > 2:
                raise UsageError("%deploy: --test takes X or X y")
            test = tuple(self._lookup(v, "test data") for v in args.test)
        dep = api.deploy(model, sample, args.name, test=test, home=self._home(),
                         port=args.port or self.port or None, force=args.force,
                         min_score=args.min_score, tolerance=args.tolerance,
                         min_agreement=args.min_agreement, max_diff=args.max_diff)
        display(dep)
        if dep.fidelity is not None:
            display(dep.fidelity)  # the conversion report: size, time, fidelity, latency

    def _train(self, args: argparse.Namespace) -> None:
        estimator = self._lookup(args.estimator, "estimator")
        X, y = self._lookup(args.X, "features"), self._lookup(args.y, "labels")
        result = api.train(estimator, X, y, args.name, test_size=args.test_size, stratify=args.stratify,
                           cv=args.cv, seed=args.seed, home=self._home())
        self.shell.user_ns[args.estimator] = result.model  # the fitted model, ready for %deploy
        display(result)

    def _test(self, args: argparse.Namespace) -> None:
        X, y = self._lookup(args.X, "features"), self._lookup(args.y, "labels")
        namespace = self.shell.user_ns
        model = namespace.get(args.model, args.model)  # else the name of a stored model
        try:
            result = api.test(model, X, y, version=args.version, name=args.model, home=self._home())
        except UnknownName as exc:
            if args.model in namespace or exc.name != args.model:
                raise
            hint = did_you_mean(args.model, [*exc.known, *self._variables()])
            raise UsageError(f"%deploy test: {args.model!r} is neither a variable nor a stored model{hint}") from None
        display(result)

    def _promote(self, args: argparse.Namespace) -> None:
        dep = api.promote(args.name, args.version, args.alias, min_score=args.min_score,
                          tolerance=args.tolerance, force=args.force, home=self._home())
        if dep.gate is not None:
            display(dep.gate)
        print(f"{args.name!r}: {args.alias} -> version {args.version}")

    def _rollback(self, args: argparse.Namespace) -> None:
        dep = api.rollback(args.name, home=self._home())
        print(f"{args.name!r}: production -> version {dep.version}")

    def _retrain(self, args: argparse.Namespace) -> None:
        data = tuple(self._lookup(v, "training data") for v in args.data) if args.data else None
        display(api.retrain(args.name, data=data, with_feedback=args.with_feedback, promote=args.promote,
                            recent=args.recent, min_score=args.min_score, tolerance=args.tolerance,
                            home=self._home()))

    def _shadow(self, args: argparse.Namespace) -> None:
        if args.stop and args.version is not None:
            raise UsageError("%deploy shadow: --stop ends the running shadow: give no VERSION")
        if not args.stop and args.version is None:
            raise UsageError("%deploy shadow: give a VERSION to shadow with, or --stop")
        api.shadow(args.name, None if args.stop else args.version, home=self._home())
        print(f"{args.name!r}: shadow stopped" if args.stop else
              f"{args.name!r}: version {args.version} now shadows production (see %deploy monitor {args.name})")

    def _canary(self, args: argparse.Namespace) -> None:
        if args.stop and args.version is not None:
            raise UsageError("%deploy canary: --stop ends the running canary: give no VERSION")
        if not args.stop and args.version is None:
            raise UsageError("%deploy canary: give a VERSION to run as the canary, or --stop")
        status = api.canary(args.name, args.version, percent=args.percent, key=args.key,
                            promote_after=args.promote_after, stop=args.stop, home=self._home())
        if args.stop:
            print(f"{args.name!r}: canary of version {status['version']} stopped; production (version "
                  f"{status['production']}) answers all traffic")
            return
        print(f"{args.name!r}: version {status['version']} answers {status['percent']:g} % of requests "
              f"(keyed by {status['key'] or 'X-Client-ID'}); {status['promotion']} "
              f"(see %deploy monitor {args.name})")

    def _serve(self, args: argparse.Namespace) -> None:
        if args.on == "local":
            dep = api.serve(args.name, home=self._home(), port=args.port or self.port or None)
            print(f"{args.name!r} v{dep.version} is served at {dep.url}")
            return
        url = api.serve_on_ray(self._home(), model=args.name, replicas=args.replicas, autoscale=args.autoscale,
                               address=args.address, port=args.port or 8000)
        print(f"serving on Ray Serve: {url}")

    def _list(self, args: argparse.Namespace) -> None:
        display(api.models(home=self._home()))

    def _stop(self, args: argparse.Namespace) -> None:
        api.stop(args.name, home=self._home())
        print(f"stopped serving {args.name!r}; its versions stay stored (serve it again: %deploy serve {args.name})")

    def _shutdown(self, args: argparse.Namespace) -> None:
        print("server stopped" if api.shutdown(home=self._home()) else "no server was running")

    def _delete(self, args: argparse.Namespace) -> None:
        print(api.delete(args.name, args.version, alias=args.alias, force=args.force, home=self._home()))

    def _prune(self, args: argparse.Namespace) -> None:
        removed = api.prune(args.name, keep=args.keep, dry_run=args.dry_run, home=self._home())
        print("\n".join(map(str, removed)) or "nothing to prune")

    def _export(self, args: argparse.Namespace) -> None:
        path = api.export(args.name, args.to, args.directory, version=args.version, home=self._home(),
                          hashes=args.hashes, base_image=args.base_image)
        print(f"exported {args.name!r} ({args.to}) to {path}: see {path / 'README.md'}")

    def _monitor(self, args: argparse.Namespace) -> None:
        if args.stop:
            print(f"stopped the monitor of {args.name!r}" if api.stop_monitors(args.name)
                  else f"no live monitor of {args.name!r} in this kernel")
            return
        display(api.monitor(args.name, interval=args.interval, sidecar=args.sidecar, since=args.since,
                            window=args.window, home=self._home()))

    def _report(self, args: argparse.Namespace) -> None:
        page = api.report(args.name, args.to, since=args.since, home=self._home())
        if args.to is None:
            display(page)
        else:
            print(f"wrote the report of {args.name!r} to {page}")

    def _panel(self, args: argparse.Namespace) -> None:
        if args.stop:
            print("stopped the models panel" if api.stop_panels() else "no live models panel in this kernel")
            return
        display(api.panel(self._home(), interval=args.interval, inline=args.inline))

    def _alerts(self, args: argparse.Namespace) -> None:
        if args.webhook is None and not args.no_webhook:
            display(api.alerts(args.name, home=self._home()))
            return
        history = api.alerts(args.name, webhook=None if args.no_webhook else args.webhook, home=self._home())
        print(f"{args.name!r}: alerts are sent to {history.webhook} (JSON POST)" if history.webhook
              else f"{args.name!r}: alerts are no longer sent (they are still recorded: %deploy alerts {args.name})")

    # -- helpers -------------------------------------------------------------------------
    def _home(self) -> str | None:
        return self.home or None

    def _variables(self) -> list[str]:
        hidden = getattr(self.shell, "user_ns_hidden", {})
        return [k for k in self.shell.user_ns if not k.startswith("_") and k not in hidden]

    def _lookup(self, name: str, what: str) -> Any:
        if name in self.shell.user_ns:
            return self.shell.user_ns[name]
        raise UsageError(f"%deploy: no variable named {name!r} for the {what}{did_you_mean(name, self._variables())}")


DeployMagics.deploy.__doc__ = help_text()  # %deploy? shows every subcommand, from the parsers


if __name__ == "__main__":
    print(reference_markdown(), end="")
