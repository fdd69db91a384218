"""The ``nbdeploy`` command: the same server and store a notebook uses, from a terminal."""

from __future__ import annotations

import argparse
import sys

from nbdeploy.errors import NbdeployError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbdeploy", description="Serve and manage nbdeploy models.")
    parser.add_argument("--home", help="store directory (default: $NBDEPLOY_HOME or ./.nbdeploy)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the V2 inference server for a store (foreground)")
    serve.add_argument("--home", dest="serve_home", help="store directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub.add_parser("list", help="models served from the store")
    stop = sub.add_parser("stop", help="stop serving a model")
    stop.add_argument("name")
    sub.add_parser("shutdown", help="stop the store's server process")
    args = parser.parse_args(argv)
    home = getattr(args, "serve_home", None) or args.home
    try:
        if args.command == "serve":
            from nbdeploy.serve.main import run

            run(home, args.host, args.port, args.log_level)
            return 0
        from nbdeploy import api

        if args.command == "list":
            for dep in api.deployments(home):
                print(f"{dep.name}\tv{dep.version}\t{dep.status}\t{dep.url}")
        elif args.command == "stop":
            api.get(args.name, home).stop()
        elif args.command == "shutdown":
            print("server stopped" if api.shutdown(home) else "no server was running")
    except NbdeployError as exc:
        print(f"nbdeploy: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
