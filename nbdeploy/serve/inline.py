"""Which versions answer on the event loop: those whose call costs less than a hand-off to a thread.

Handing a request to the version's worker thread and its answer back costs two thread wake-ups
(≈ 25-40 µs on a small machine), more than ONNX Runtime takes to run a small linear model or a few
trees on a few rows. So a version whose measured call stays under :data:`INLINE_BUDGET_MS`
(99th percentile of :data:`PROBE_CALLS` calls at load, and a median single-row call under it too)
runs a request of up to :data:`INLINE_MAX_ROWS` rows on the event loop when it is alone (nothing
queued for the version, no other request this turn of the loop: under load the worker thread, which
answers a turn's requests together, costs less per request); slower versions and larger requests
keep going to the worker thread.

The batcher keeps an eye on the promise: a version whose inline calls take more than
``INLINE_ABANDON_MS`` of the event loop thread's CPU time more than ``INLINE_STRIKES`` times, at a
rate above one in a hundred, goes back to its thread for good (see :meth:`Batcher._inline`).
"""

from __future__ import annotations

import time

import numpy as np

from nbdeploy.serve.probe import Run, warmup_feeds
from nbdeploy.signature import Signature

INLINE_BUDGET_MS = 0.1  # what one inline call may cost at its 99th percentile
INLINE_MAX_ROWS = 16  # larger requests go to the worker thread whatever the model
INLINE_ABANDON_MS = 1.0  # an inline call slower than this is a strike against the version
INLINE_STRIKES = 3  # strikes that send a version back to its thread for good...
INLINE_SLOW_SHARE = 0.01  # ...each forgiven after 100 calls in time (a preempted call now and then is not the model)
PROBE_CALLS = 100


def inline_rows(signature: Signature, run: Run, single_row_ms: float) -> int:
    """The most rows a request may have to run on the event loop: ``INLINE_MAX_ROWS``, 1 or 0 (never)."""
    if single_row_ms >= INLINE_BUDGET_MS:  # the median already says no: spare the probe
        return 0
    for rows in (INLINE_MAX_ROWS, 1):
        # the better of two probes: a model that is slow is slow in both, a busy machine rarely spoils both
        if min(call_p99_ms(signature, run, rows) for _ in range(2)) < INLINE_BUDGET_MS:
            return rows
    return 0


def call_p99_ms(signature: Signature, run: Run, rows: int, calls: int = PROBE_CALLS) -> float:
    """The 99th percentile of ``calls`` calls on ``rows`` rows, in milliseconds of the calling thread's CPU
    time (ONNX Runtime runs a session with one intra-op thread in its caller); "lower", so that one
    unlucky call does not decide alone."""
    feeds = warmup_feeds(signature, rows)
    run(feeds)  # the first call of a shape allocates
    times = np.empty(calls)
    for i in range(calls):  # the thread's CPU time: a busy machine must not decide for the model
        started = time.thread_time()
        run(feeds)
        times[i] = time.thread_time() - started
    return float(np.percentile(times, 99, method="lower")) * 1000
