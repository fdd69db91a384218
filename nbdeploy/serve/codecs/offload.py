"""Decoding large bodies off the event loop.

The decoders (:func:`~nbdeploy.serve.codecs.v2.decode_infer_request`,
:func:`~nbdeploy.serve.codecs.mlflow.decode_scoring_request`) are pure functions from the body's
bytes to a decoded request: they keep no state between calls, so any thread may run them. A small
body decodes in microseconds, less than a hand-off to a thread costs, so it stays on the loop; a
large one (a 4 MiB JSON body takes tens of milliseconds) would hold up every other request on the
loop, health checks included, so it goes to a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

OFF_LOOP_BYTES = 64 * 1024
"""Bodies larger than this are decoded in a worker thread."""

DECODING_THREADS = 1
"""Large bodies decoded at once, per server process. The decoders hold the GIL most of the time, so
more threads decode no faster: they only take turns with each other and with the event loop, which
then waits longer for its turn (measured with eight 4 MB requests at once: readiness p99 89 ms with
one thread, 130-390 ms with two, 360 ms with anyio's default of 40)."""

_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def _threads() -> anyio.CapacityLimiter:
    """The limiter of the running loop (one per loop: a test may run several apps, each on its own)."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(DECODING_THREADS)
    return limiter


async def decode_off_loop(size: int, decode: Callable[..., T], *args: object) -> T:
    """``decode(*args)``: on the loop for a body of at most :data:`OFF_LOOP_BYTES`, else in a worker thread."""
    if size <= OFF_LOOP_BYTES:
        return decode(*args)
    return await anyio.to_thread.run_sync(functools.partial(decode, *args), limiter=_threads())
