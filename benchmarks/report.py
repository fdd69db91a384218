"""The benchmark's table, targets and profile, as printed and as written to docs/performance.md."""

from __future__ import annotations

import collections
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness
import peers

TARGETS_TEXT = """\
Targets, as ratios on the same machine in the same run, against the floor:
single-row req/s at concurrency 16 ≥ 0.3× the floor, ≥ 25× MLflow, ≥ 8× BentoML; single-row p50 at
concurrency 1 ≤ 2.5× the floor's; the ≈1 ms model with batching on at concurrency 16 ≥ 2× batching off;
start-up to ready ≤ 1 s and resident memory ≤ 150 MB with one small model."""


def _median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows]
    return statistics.median(values) if values else float("nan")


def _cells(results: list[dict]) -> dict[tuple, dict]:
    grouped: dict[tuple, list[dict]] = collections.defaultdict(list)
    for r in results:
        grouped[r["model"], r["server"], r["rows"], r["conc"]].append(r)
    return {k: {"rps": _median(v, "rps"), "p50": _median(v, "p50"), "p99": _median(v, "p99"),
                "errors": sum(r["errors"] for r in v), "rss": max(r["rss"] for r in v)} for k, v in grouped.items()}


def table(results: list[dict], titles: dict[str, str]) -> list[str]:
    cells = _cells(results)
    out = []
    for model in dict.fromkeys(r["model"] for r in results):
        out += [f"\n### {titles.get(model, model)}\n",
                "| server | rows | conc | req/s | × floor | p50 ms | p99 ms | p50 × floor | errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        servers = list(dict.fromkeys(r["server"] for r in results if r["model"] == model))
        for rows, conc in sorted({(r["rows"], r["conc"]) for r in results if r["model"] == model}):
            floor = cells.get((model, "floor", rows, conc))
            for server in servers:
                c = cells.get((model, server, rows, conc))
                if c is None:
                    continue
                ratio = c["rps"] / floor["rps"] if floor else float("nan")
                p50_ratio = c["p50"] / floor["p50"] if floor else float("nan")
                out.append(f"| {server} | {rows} | {conc} | {c['rps']:,.0f} | {ratio:.2f} | {c['p50']:.3f} | "
                           f"{c['p99']:.3f} | {p50_ratio:.2f} | {c['errors']} |")
    return out


def targets(results: list[dict], startup: dict) -> list[str]:
    cells = _cells(results)
    out = ["| target | measured | reached |", "|---|---|---|"]

    def row(name: str, value: float | None, goal: float, fmt: str, higher: bool = True) -> None:
        if value is None or value != value:
            out.append(f"| {name} | not measured | – |")
            return
        ok = value >= goal if higher else value <= goal
        out.append(f"| {name} | {format(value, fmt)} | {'yes' if ok else '**no**'} |")

    for model in ("lr", "rf"):
        nb, floor = cells.get((model, "nbdeploy", 1, 16)), cells.get((model, "floor", 1, 16))
        if not nb or not floor:
            continue
        row(f"{model}: 1-row req/s at c16 vs floor (≥ 0.3×)", nb["rps"] / floor["rps"], 0.3, ".2f")
        for peer, goal in (("mlflow", 25), ("bentoml", 8)):
            other = cells.get((model, peer, 1, 16))
            row(f"{model}: 1-row req/s at c16 vs {peer} (≥ {goal}×)", nb["rps"] / other["rps"] if other else None,
                goal, ".1f")
        nb1, floor1 = cells.get((model, "nbdeploy", 1, 1)), cells.get((model, "floor", 1, 1))
        if nb1 and floor1:
            row(f"{model}: 1-row p50 at c1 vs floor (≤ 2.5×)", nb1["p50"] / floor1["p50"], 2.5, ".2f", higher=False)
    on, off = cells.get(("mlp", "nbdeploy batching on", 1, 16)), cells.get(("mlp", "nbdeploy batching off", 1, 16))
    row("≈1 ms model: batching on vs off, 1-row c16 (≥ 2×)", on["rps"] / off["rps"] if on and off else None, 2, ".2f")
    row("start-up to ready, one small model (≤ 1 s)", startup.get("startup_s"), 1.0, ".2f", higher=False)
    row("resident memory under load, one small model (≤ 150 MB)", startup.get("rss_mb"), 150, ".0f", higher=False)
    return out


def profile_nbdeploy(server: harness.Server, work: Path, wrk_bin: str, body: Path, seconds: float = 6) -> dict | None:
    """Sample the server with py-spy while wrk drives 1-row requests at c16; None if py-spy is missing."""
    spy = _py_spy()
    if spy is None or not server.start(work / "profile.log"):
        return None
    out = work / "profile.txt"
    try:
        sampler = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--duration", str(seconds),
                                    "--rate", "250", "--format", "raw", "--output", str(out), "--threads", "--gil",
                                    "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        harness.wrk(wrk_bin, server.score_url, body, 16, seconds)
        sampler.wait(timeout=60)
    finally:
        server.stop()
    return summarize(out.read_text()) if out.exists() else None


def _py_spy() -> str | None:
    root = peers.VENVS / "tools"
    spy = root / "bin" / "py-spy"
    if not spy.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True)
            subprocess.run([str(root / "bin" / "pip"), "install", "-q", "py-spy"], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            print("[skip] profile: cannot install py-spy", flush=True)
            return None
    return str(spy)


BUCKETS = [  # (label, substring of a frame), first match from the leaf up wins
    ("ONNX Runtime run", "onnxruntime"),
    ("prediction log writer", "store/log.py"),
    ("prediction log writer", "store/writer.py"),
    ("prediction log writer", "store/batch.py"),
    ("prediction log writer", "store/writes.py"),
    ("prediction log writer", "store/events.py"),
    ("V2 decode + validation", "codecs/"),
    ("V2 decode + validation", "protocol.py"),
    ("V2 decode + validation", "handlers.py"),
    ("V2 decode + validation", "signature.py"),
    ("batcher hand-off (or inline run)", "batcher.py"),
    ("inference dispatch", "serve/dispatch.py"),
    ("inference route", "inference.py"),
    ("security guard", "security.py"),
    ("Starlette routing/middleware", "starlette/"),
    ("uvicorn + httptools", "uvicorn/"),
    ("asyncio/uvloop", "asyncio/"),
]


def summarize(raw: str) -> dict:
    """Share of samples per bucket (by the innermost matching frame) and the hottest leaf frames."""
    buckets: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaves[frames[-1]] += n
        label = "other"
        for frame in reversed(frames):
            hit = next((b for b, needle in BUCKETS if needle in frame), None)
            if hit:
                label = hit
                break
        buckets[label] += n
    return {"total": total, "buckets": buckets.most_common(), "leaves": leaves.most_common(12)}


def render(results: list[dict], startup: dict, profile: dict | None, args, elapsed: float,
           titles: dict[str, str]) -> str:
    import numpy
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        "# Serving performance",
        "",
        "Generated by `benchmarks/serving.py` (not part of the test run). Numbers are medians of interleaved",
        "rounds on one machine in one run; compare ratios, not absolute values, across machines.",
        "",
        "## How to reproduce",
        "",
        "```",
        ".venv/bin/pip install -e '.[dev]'",
        f".venv/bin/python benchmarks/serving.py --duration {args.duration:g} --rounds {args.rounds}",
        "```",
        "",
        "The harness installs `wrk` (Debian) if missing, and each peer into its own virtual environment",
        "under `benchmarks/.venvs` (first run only; a peer that cannot install is skipped with a message).",
        "nbdeploy runs as `nbdeploy serve` with its defaults: request validation on, the prediction log",
        "(`log.db`) on, batching `auto`. Every server gets the same fitted model; nbdeploy serves its ONNX",
        "conversion. Request bodies: V2 JSON for the floor and nbdeploy (one input per column for the",
        "DataFrame model), `dataframe_split`/`inputs` for MLflow, `{\"data\": rows}` for FastAPI and BentoML.",
        "`nbdeploy, log off` is the same server with `NBDEPLOY_PREDICTION_LOG=off`, to show the log's share.",
        "",
        f"Machine: {cpu}, {len(__import__('os').sched_getaffinity(0))} cores; Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}; wrk -c1 (1 thread) / -c16 "
        f"(2 threads), {args.duration:g} s per cell, {args.rounds} round(s); run took {elapsed / 60:.1f} min.",
        "",
        "## Targets",
        "",
        TARGETS_TEXT,
        "",
        *targets(results, startup),
        "",
        "## Results",
        *table(results, titles),
        "",
    ]
    if profile:
        total = profile["total"] or 1
        lines += ["## Where the time goes (nbdeploy, logistic regression, 1 row, c16)", "",
                  "py-spy samples (`--gil`: only the thread holding the GIL, that is where the Python CPU goes)",
                  "of the server process while wrk drives it; each sample is charged to the innermost frame",
                  "that falls in one of these parts. uvicorn's two `transport.write` calls per response (headers,",
                  "body) are socket writes that the floor makes too.", "",
                  "| part | share of samples |", "|---|---:|"]
        lines += [f"| {label} | {100 * n / total:.1f} % |" for label, n in profile["buckets"]]
        lines += ["", "Hottest innermost frames:", "", "| frame | share |", "|---|---:|"]
        lines += [f"| `{frame[:110]}` | {100 * n / total:.1f} % |" for frame, n in profile["leaves"]]
        lines.append("")
    return "\n".join(lines)
