"""``%deploy``: parse the line, look names up in the user's namespace, make one call into the API.

Errors are one-line ``UsageError``s with "did you mean" suggestions; nothing here holds logic
that the Python API lacks.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import display
from traitlets import Int, Unicode

from nbdeploy import api
from nbdeploy.convert.fidelity import MAX_DIFF, MIN_AGREEMENT
from nbdeploy.errors import NbdeployError
from nbdeploy.lifecycle.evaluation import evaluate
from nbdeploy.lifecycle.promotion import GateRefused
from nbdeploy.store import Store


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting the kernel."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"%deploy {self.prog.split()[-1]}: {message}".replace("%deploy deploy", "%deploy"))


def build_parsers() -> dict[str, argparse.ArgumentParser]:
    """One parser per subcommand; also the source of the docs' option reference."""
    parsers: dict[str, argparse.ArgumentParser] = {}
    p = _Parser(prog="deploy", add_help=False, description="Convert, store and serve a fitted model.")
    p.add_argument("model", help="variable holding a fitted scikit-learn estimator or pipeline")
    p.add_argument("--name", required=True, help="model name in the store (letters, digits, '.', '-', '_')")
    p.add_argument("--sample", required=True, help="variable with sample input (DataFrame or 2-D array)")
    p.add_argument("--test", nargs="+", metavar="VAR", help="held-out X [y] for the fidelity check")
    p.add_argument("--port", type=int, help="port for a new server (default: a free one)")
    p.add_argument("--force", action="store_true",
                   help="deploy even if the fidelity check or the promotion gate refuses it")
    p.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                   help="fidelity: share of rows where ONNX and scikit-learn labels must agree (default 0.999)")
    p.add_argument("--max-diff", type=float, default=MAX_DIFF,
                   help="fidelity: largest probability (regression: relative) difference (default 1e-4)")
    _gate_options(p)
    parsers["deploy"] = p
    p = _Parser(prog="train", add_help=False,
                description="Split, fit, evaluate on the held-out part and record a run.")
    p.add_argument("estimator", help="variable holding a scikit-learn estimator or pipeline (fitted in place)")
    p.add_argument("X", help="variable with the features")
    p.add_argument("y", help="variable with the labels or targets")
    p.add_argument("--name", required=True, help="model name the run is recorded under")
    p.add_argument("--test-size", type=float, default=0.2, help="held-out share (default 0.2)")
    p.add_argument("--stratify", action="store_true", help="keep class proportions in the split")
    p.add_argument("--cv", type=int, help="also cross-validate on the training part with K folds")
    p.add_argument("--seed", type=int, default=0, help="random seed for the split and the estimator")
    parsers["train"] = p
    p = _Parser(prog="test", add_help=False, description="Evaluate a model on labelled data (a report).")
    p.add_argument("model", help="variable holding a fitted model, or the name of a stored model")
    p.add_argument("X", help="variable with the features")
    p.add_argument("y", help="variable with the labels or targets")
    p.add_argument("--version", help="stored version or alias to test (default: production)")
    parsers["test"] = p
    p = _Parser(prog="promote", add_help=False, description="Point an alias (default production) at a version.")
    p.add_argument("name", help="model name")
    p.add_argument("version", type=int, help="version number")
    p.add_argument("--alias", default="production", help="alias to move (default production)")
    p.add_argument("--force", action="store_true", help="promote even if the gate refuses it")
    _gate_options(p)
    parsers["promote"] = p
    p = _Parser(prog="rollback", add_help=False, description="Serve the previous production version again.")
    p.add_argument("name", help="model name")
    parsers["rollback"] = p
    p = _Parser(prog="retrain", add_help=False,
                description="Fit a fresh clone of the production pipeline; judge it on recent labels.")
    p.add_argument("name", help="model name")
    p.add_argument("--data", nargs=2, metavar=("X", "Y"), help="training data (default: the rows production "
                   "was trained on)")
    p.add_argument("--with-feedback", action="store_true",
                   help="also train on labelled production traffic (all but the most recent share)")
    p.add_argument("--recent", type=float, default=0.3,
                   help="share of the newest labelled traffic kept apart to judge the models (default 0.3)")
    p.add_argument("--promote", action="store_true", help="promote the new version if it passes the gate")
    _gate_options(p)
    parsers["retrain"] = p
    p = _Parser(prog="shadow", add_help=False,
                description="Send a copy of live traffic to another version; only production answers.")
    p.add_argument("name", help="model name")
    p.add_argument("version", type=int, nargs="?", help="version to shadow production with")
    p.add_argument("--stop", action="store_true", help="stop shadowing")
    parsers["shadow"] = p
    p = _Parser(prog="serve", add_help=False,
                description="Serve the store on Ray Serve (a local Ray, or the cluster at --address).")
    p.add_argument("name", help="model to show the endpoint of (the whole store is served)")
    p.add_argument("--on", required=True, choices=["ray"], help="where to serve: ray")
    p.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (default 1)")
    p.add_argument("--autoscale", metavar="MIN,MAX", help="autoscale between MIN and MAX replicas instead")
    p.add_argument("--address", help="an existing Ray cluster (default: start a local Ray)")
    p.add_argument("--port", type=int, default=8000, help="Ray Serve's HTTP port (default 8000)")
    parsers["serve"] = p
    p = _Parser(prog="list", add_help=False, description="Every model in the store: versions, aliases, status.")
    parsers["list"] = p
    p = _Parser(prog="stop", add_help=False, description="Stop serving a model (the server exits when idle).")
    p.add_argument("name", help="model name")
    parsers["stop"] = p
    p = _Parser(prog="shutdown", add_help=False, description="Stop the store's server process.")
    parsers["shutdown"] = p
    p = _Parser(prog="monitor", add_help=False,
                description="Live monitor of a served model: status, traffic, latency, quality, drift.")
    p.add_argument("name", help="model name")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between refreshes")
    p.add_argument("--sidecar", action="store_true", help="dock it in a JupyterLab side panel (pip install sidecar)")
    p.add_argument("--stop", action="store_true", help="stop the live monitor of NAME, leaving its last state")
    parsers["monitor"] = p
    p = _Parser(prog="export", add_help=False,
                description="Write a stored version for another platform, with a README of the commands.")
    p.add_argument("name", help="model name")
    p.add_argument("directory", help="new or empty directory to write")
    p.add_argument("--to", required=True, metavar="FORMAT", help="bundle, docker, triton, kserve or ray")
    p.add_argument("--version", help="version number or alias to export (default: production)")
    parsers["export"] = p
    return parsers


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-score", type=float, help="floor for the held-out metric (accuracy or R²)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="how much worse than production the candidate may score (default 0)")


SUBCOMMANDS = ("train", "test", "promote", "rollback", "retrain", "shadow", "serve", "list", "stop", "shutdown",
               "export", "monitor")


@magics_class
class DeployMagics(Magics):
    """The ``%deploy`` line magic. ``%config DeployMagics.port = 9000`` sets a default port."""

    port = Int(0, help="Port for a newly started server; 0 picks a free one.").tag(config=True)
    home = Unicode("", help="Store directory (default: $NBDEPLOY_HOME or ./.nbdeploy).").tag(config=True)

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        shell.configurables.append(self)
        self._parsers = build_parsers()

    @line_magic
    def deploy(self, line: str) -> Any:
        """%deploy MODEL --name NAME --sample X [--test X y] | train | test | promote | rollback | list | stop
        | export"""
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%deploy: cannot parse the line: {exc}") from None
        if not tokens:
            raise UsageError("%deploy: expected MODEL --name NAME --sample X, or one of: " + ", ".join(SUBCOMMANDS))
        command = tokens[0] if tokens[0] in SUBCOMMANDS else "deploy"
        args = self._parsers[command].parse_args(tokens[1:] if command != "deploy" else tokens)
        try:
            return getattr(self, f"_{command}")(args)
        except NbdeployError as exc:
            prefix = "%deploy" if command == "deploy" else f"%deploy {command}"
            raise UsageError(f"{prefix}: {exc.message}") from None

    # -- subcommands -------------------------------------------------------------------
    def _deploy(self, args: argparse.Namespace) -> api.Deployment:
        model = self._lookup(args.model, "model")
        sample = self._lookup(args.sample, "sample")
        test = None
        if args.test:
            if len(args.test) > 2:
                raise UsageError("%deploy: --test takes X or X y")
            test = tuple(self._lookup(v, "test data") for v in args.test)
        try:
            dep = api.deploy(model, sample, args.name, test=test, home=self._home(),
                             port=args.port or self.port or None, force=args.force,
                             min_score=args.min_score, tolerance=args.tolerance,
                             min_agreement=args.min_agreement, max_diff=args.max_diff)
        except GateRefused as refused:
            display(refused.decision)
            print(refused.message)
            return None
        display(dep)
        if dep.fidelity is not None:
            display(dep.fidelity)  # the conversion report: size, time, fidelity, latency
        return None

    def _train(self, args: argparse.Namespace) -> None:
        estimator = self._lookup(args.estimator, "estimator")
        X, y = self._lookup(args.X, "features"), self._lookup(args.y, "labels")
        result = api.train(estimator, X, y, args.name, test_size=args.test_size, stratify=args.stratify,
                           cv=args.cv, seed=args.seed, home=self._home())
        self.shell.user_ns[args.estimator] = result.model  # the fitted model, ready for %deploy
        display(result)

    def _test(self, args: argparse.Namespace) -> None:
        X, y = self._lookup(args.X, "features"), self._lookup(args.y, "labels")
        if args.model in self.shell.user_ns:
            display(evaluate(self.shell.user_ns[args.model], X, y, name=args.model))
            return
        if args.model not in Store(self._home()).model_names():
            self._lookup(args.model, "model (a variable or a stored model name)")
        display(api.evaluate_stored(args.model, X, y, version=args.version, home=self._home()))

    def _promote(self, args: argparse.Namespace) -> None:
        try:
            dep = api.promote(args.name, args.version, args.alias, min_score=args.min_score,
                              tolerance=args.tolerance, force=args.force, home=self._home())
        except GateRefused as refused:
            display(refused.decision)
            print(refused.message)
            return
        if dep.gate is not None:
            display(dep.gate)
        print(f"{args.name!r}: {args.alias} -> version {args.version}")

    def _rollback(self, args: argparse.Namespace) -> None:
        dep = api.rollback(args.name, home=self._home())
        print(f"{args.name!r}: production -> version {dep.version}")

    def _retrain(self, args: argparse.Namespace) -> None:
        from nbdeploy.lifecycle.retraining import retrain

        data = tuple(self._lookup(v, "training data") for v in args.data) if args.data else None
        display(retrain(args.name, data=data, with_feedback=args.with_feedback, promote=args.promote,
                        recent=args.recent, min_score=args.min_score, tolerance=args.tolerance,
                        home=self._home()))

    def _shadow(self, args: argparse.Namespace) -> None:
        if args.stop == (args.version is not None):
            raise UsageError("%deploy shadow: give a VERSION to shadow with, or --stop")
        api.shadow(args.name, None if args.stop else args.version, home=self._home())
        print(f"{args.name!r}: shadow stopped" if args.stop else
              f"{args.name!r}: version {args.version} now shadows production (see %deploy monitor {args.name})")

    def _serve(self, args: argparse.Namespace) -> None:
        from nbdeploy.serve.ray import serve_on_ray

        api.get(args.name, home=self._home())  # the model must exist; "did you mean" otherwise
        autoscale = None
        if args.autoscale:
            try:
                low, high = (int(v) for v in args.autoscale.split(","))
            except ValueError:
                raise UsageError(f"%deploy serve: --autoscale takes MIN,MAX, got {args.autoscale!r}") from None
            autoscale = {"min_replicas": low, "max_replicas": high}
        url = serve_on_ray(self._home(), replicas=args.replicas, autoscale=autoscale, address=args.address,
                           port=args.port)
        print(f"serving on Ray Serve: {url}/v2/models/{args.name}")

    def _list(self, args: argparse.Namespace) -> None:
        display(api.models(home=self._home()))

    def _stop(self, args: argparse.Namespace) -> None:
        api.get(args.name, home=self._home()).stop()
        print(f"stopped serving {args.name!r}")

    def _shutdown(self, args: argparse.Namespace) -> None:
        print("server stopped" if api.shutdown(home=self._home()) else "no server was running")

    def _export(self, args: argparse.Namespace) -> None:
        from nbdeploy.exporters import export

        path = export(args.name, args.to, args.directory, version=args.version, home=self._home())
        print(f"exported {args.name!r} ({args.to}) to {path}: see {path / 'README.md'}")

    def _monitor(self, args: argparse.Namespace) -> None:
        if args.stop:
            from nbdeploy.display.monitor import stop_monitors

            print(f"stopped the monitor of {args.name!r}" if stop_monitors(args.name)
                  else f"no live monitor of {args.name!r} in this kernel")
            return
        if args.interval <= 0:
            raise UsageError("%deploy monitor: --interval must be a positive number of seconds")
        display(api.get(args.name, home=self._home()).monitor(interval=args.interval, sidecar=args.sidecar))

    # -- helpers -------------------------------------------------------------------------
    def _home(self) -> str | None:
        return self.home or None

    def _lookup(self, name: str, what: str) -> Any:
        namespace = self.shell.user_ns
        if name in namespace:
            return namespace[name]
        candidates = [k for k in namespace if not k.startswith("_")]
        close = difflib.get_close_matches(name, candidates, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"%deploy: no variable named {name!r} for the {what}{hint}")


def _usage(command: str, parser: argparse.ArgumentParser) -> str:
    parts = ["%deploy"] + ([] if command == "deploy" else [command])
    for action in parser._actions:
        if not action.option_strings:
            parts.append(action.dest.upper())
    for action in parser._actions:
        if action.option_strings:
            flag = action.option_strings[0]
            if action.nargs == 0:
                text = flag
            else:
                metavar = action.metavar or action.dest.upper()
                if isinstance(metavar, tuple):
                    metavar = " ".join(metavar)
                text = f"{flag} {metavar}" + (f" [{metavar}]" if action.nargs == "+" else "")
            parts.append(text if action.required else f"[{text}]")
    return " ".join(parts)


def reference_markdown() -> str:
    """The ``%deploy`` reference for docs/magics.md, rendered from the parsers themselves."""
    lines = ["# `%deploy` reference", "",
             "Generated from the magic's own parsers: `python -m nbdeploy.magics > docs/magics.md`.", "",
             "Load the extension with `%load_ext nbdeploy`. Options can be set once per session with",
             "`%config DeployMagics.port = 9000` and `%config DeployMagics.home = '/path/to/store'`.", ""]
    for command, parser in build_parsers().items():
        lines += [f"## `{command}`", "", parser.description or "", "", "```", _usage(command, parser), "```", ""]
        rows = []
        for action in parser._actions:
            name = ", ".join(action.option_strings) or action.dest.upper()
            default = "" if action.default in (None, False) or action.required else f" (default: {action.default})"
            rows.append(f"| `{name}` | {action.help or ''}{default} |")
        if rows:
            lines += ["| argument | meaning |", "|---|---|", *rows, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
