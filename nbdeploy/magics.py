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
from nbdeploy.errors import NbdeployError


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
    p.add_argument("--force", action="store_true", help="deploy even if the ONNX model fails the fidelity check")
    parsers["deploy"] = p
    p = _Parser(prog="list", add_help=False, description="Models this store serves.")
    parsers["list"] = p
    p = _Parser(prog="stop", add_help=False, description="Stop serving a model (the server exits when idle).")
    p.add_argument("name", help="model name")
    parsers["stop"] = p
    p = _Parser(prog="shutdown", add_help=False, description="Stop the store's server process.")
    parsers["shutdown"] = p
    return parsers


SUBCOMMANDS = ("list", "stop", "shutdown")


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
        """%deploy MODEL --name NAME --sample X [--test X y] | list | stop NAME | shutdown"""
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
        dep = api.deploy(model, sample, args.name, test=test, home=self._home(),
                         port=args.port or self.port or None, force=args.force)
        display(dep)
        return None

    def _list(self, args: argparse.Namespace) -> None:
        deps = api.deployments(home=self._home())
        if not deps:
            print("no models are served from this store")
            return
        for dep in deps:
            display(dep)

    def _stop(self, args: argparse.Namespace) -> None:
        api.get(args.name, home=self._home()).stop()
        print(f"stopped serving {args.name!r}")

    def _shutdown(self, args: argparse.Namespace) -> None:
        print("server stopped" if api.shutdown(home=self._home()) else "no server was running")

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
