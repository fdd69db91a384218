"""``PYTHONPATH=tests python -m model_matrix [--write PATH | --check PATH] [ROW ...]``: run the coverage matrix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_matrix.run import render, run_matrix, stale, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="PYTHONPATH=tests python -m model_matrix", description=__doc__)
    parser.add_argument("rows", nargs="*", help="run only these rows (default: all)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="PATH", help="write the generated page (docs/supported-models.md)")
    group.add_argument("--check", metavar="PATH", help="exit 1 when the page does not match this run")
    args = parser.parse_args(argv)
    rows = run_matrix(names=args.rows or None)
    for row in rows:
        print(f"{row.case:28} {row.status:11} {row.precision:5} {row.seconds:5.1f}s {row.detail}", file=sys.stderr)
    s = summary(rows)
    print(f"{s['as_expected']} of {s['ran']} rows as expected ({s['passed']} passed, {s['refused']} refused by the "
          f"gate, {s['unsupported']} before converting); worst diff {s['worst_diff']}, lowest agreement "
          f"{s['lowest_agreement']}", file=sys.stderr)
    if args.check:
        problems = stale(rows, Path(args.check).read_text())
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems or s["as_expected"] != s["ran"] else 0
    text = render(rows)
    if args.write:
        Path(args.write).write_text(text)
    else:
        print(text)
    return 0 if s["as_expected"] == s["ran"] else 1


if __name__ == "__main__":
    sys.exit(main())
