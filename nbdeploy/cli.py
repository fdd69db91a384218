"""The ``nbdeploy`` command: the same server and store a notebook uses, from a terminal."""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path

from nbdeploy.errors import NbdeployError

STORE_HELP = "the store: a directory, or a PostgreSQL URL (postgresql://user@host/database)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbdeploy", description="Serve and manage nbdeploy models.")
    parser.add_argument("--home", help=f"{STORE_HELP} (default: $NBDEPLOY_HOME or ./.nbdeploy)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the inference server for a store (foreground)")
    serve.add_argument("--home", dest="sub_home", metavar="HOME",
                       help=f"{STORE_HELP}; servers on several machines given one PostgreSQL URL share its models, "
                            "predictions and feedback")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; any other address requires the token)")
    serve.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="another Host header name to accept (repeatable)")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="a web origin (scheme://host[:port]) whose pages may call the server, with CORS "
                            "(repeatable; * for any, only with the token; default $NBDEPLOY_ALLOWED_ORIGINS)")
    serve.add_argument("--batching", choices=["auto", "on", "off"], help="adaptive batching (default auto)")
    serve.add_argument("--max-batch-rows", type=int, help="most rows per batched ONNX call (default 64)")
    serve.add_argument("--max-batch-wait-ms", type=float, help="longest a batch waits for more rows (default 1)")
    serve.add_argument("--max-queue-rows", type=int, help="rows queued per version before 503 (default 4096)")
    serve.add_argument("--max-body-bytes", type=int, help="request body limit (default 4 MiB)")
    serve.add_argument("--workers", type=int,
                       help="server processes sharing the port (default 1, or $NBDEPLOY_WORKERS)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    for name, text in (("list", "every model in the store: versions and their states, aliases, status, endpoint"),
                       ("shutdown", "stop the store's server process")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--home", dest="sub_home", metavar="HOME", help=STORE_HELP)
    stop = sub.add_parser("stop", help="stop serving a model (the server exits when it serves nothing)")
    stop.add_argument("name")
    stop.add_argument("--home", dest="sub_home", metavar="HOME", help=STORE_HELP)
    logs = sub.add_parser("logs", help="the server's log lines about a model")
    logs.add_argument("name")
    logs.add_argument("-n", "--lines", type=int, default=50, help="how many of the last lines (default 50)")
    logs.add_argument("--home", dest="sub_home", metavar="HOME", help=STORE_HELP)
    delete = sub.add_parser("delete", help="delete a version, an alias, or (with neither) a whole model, with its "
                                           "files and logged predictions")
    delete.add_argument("name")
    delete.add_argument("version", nargs="?", help="version number (default: the whole model)")
    delete.add_argument("--alias", help="remove this alias only")
    delete.add_argument("--force", action="store_true",
                        help="also delete what an alias points at, removing the alias (production: stops serving)")
    delete.add_argument("--home", dest="sub_home", metavar="HOME", help=STORE_HELP)
    prune = sub.add_parser("prune", help="delete all but the newest N versions of each model (or one), keeping "
                                         "every version an alias points at")
    prune.add_argument("name", nargs="?", help="only this model (default: every model)")
    prune.add_argument("--keep", type=int, required=True, metavar="N", help="newest versions to keep per model")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    prune.add_argument("--home", dest="sub_home", metavar="HOME", help=STORE_HELP)
    upgrade = sub.add_parser("upgrade", help="bring a store made by an older nbdeploy to this one's format "
                                             "(a copy of its database is kept first)")
    upgrade.add_argument("--home", dest="sub_home", metavar="HOME", help=STORE_HELP)
    store = sub.add_parser("store", help="work on whole stores")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    copy = store_sub.add_parser("copy", help="copy a whole store into a new, empty one (SQLite or PostgreSQL, "
                                             "either way), verified; see docs/store-copy.md")
    copy.add_argument("src", help="the store to copy: a directory or a PostgreSQL URL")
    copy.add_argument("dst", help="the empty store to copy into (created if missing)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    home = getattr(args, "sub_home", None) or args.home
    try:
        if args.command == "serve":
            return _serve(args, home)
        if args.command == "logs":
            return _logs(args.name, home, args.lines)
        from nbdeploy import api

        if args.command == "list":
            print(repr(api.models(home)))  # the one view of a store, as %deploy list and nbdeploy.models()
        elif args.command == "stop":
            api.stop(args.name, home)
            print(f"stopped serving {args.name}; its versions stay stored (serve it again: %deploy serve "
                  f"{args.name}, or nbdeploy.get({args.name!r}).serve())")
        elif args.command == "shutdown":
            print("server stopped" if api.shutdown(home) else "no server was running")
        elif args.command == "delete":
            print(api.delete(args.name, args.version, alias=args.alias, force=args.force, home=home))
        elif args.command == "prune":
            removed = api.prune(args.name, keep=args.keep, dry_run=args.dry_run, home=home)
            print("\n".join(map(str, removed)) or "nothing to prune")
        elif args.command == "upgrade":
            print(api.upgrade(home))
        elif args.command == "store" and args.store_command == "copy":
            from nbdeploy.store.copying import copy_store

            print(copy_store(args.src, args.dst))
    except NbdeployError as exc:
        print(f"nbdeploy: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace, home: str | None) -> int:
    from nbdeploy.serve.config import ServeConfig
    from nbdeploy.serve.server import run

    config = ServeConfig.from_env(batching=args.batching, max_batch_rows=args.max_batch_rows,
                                  max_batch_wait_ms=args.max_batch_wait_ms, max_queue_rows=args.max_queue_rows,
                                  max_body_bytes=args.max_body_bytes, workers=args.workers,
                                  allowed_origins=",".join(args.allow_origin) or None)
    run(home, args.host, args.port, args.log_level, config=config, allow_hosts=tuple(args.allow_host))
    return 0


def _logs(name: str, home: str | None, lines: int) -> int:
    from nbdeploy.store import open_store

    store = open_store(home)  # reading logs never creates a store
    store.require_model(name)
    path = Path(store.home) / "server.log"  # this machine's server's log (a PostgreSQL store's local directory)
    if not path.exists():
        print(f"no server log yet in {path}")
        return 0
    needles = (f" {name} ", f"'{name}'", f"{name}:")
    with open(path, errors="replace") as fh:
        kept = deque((line.rstrip("\n") for line in fh if any(n in line for n in needles)), maxlen=lines)
    for line in kept:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
