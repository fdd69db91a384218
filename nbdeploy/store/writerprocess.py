"""The prediction log's writer process: ``python -m nbdeploy.store.writerprocess``, started by the
server's :class:`~nbdeploy.store.logprocess.ProcessWriter`, which describes the arrangement.

One thread: it reads the pipe's frames, queues the events on a :class:`~nbdeploy.store.writer.LogWriter`
(the same one a server's writer thread runs, without its thread) and commits them every
``interval`` seconds, sooner when ``batch_rows`` rows wait or a flush asks; it answers flushes and
reports its counts as JSON lines.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import struct
import sys
import time
from typing import Any

import orjson

from nbdeploy.store import eventcodec
from nbdeploy.store.batch import BUCKET_SECONDS
from nbdeploy.store.log import PredictionLog, registry_profiles
from nbdeploy.store.logprocess import CLOSE, DROPS, EVENT, EVENTS, FLUSH, FRAME, STATUS_EVERY_S, write_all
from nbdeploy.store.registry import Store
from nbdeploy.store.writer import LogWriter

log = logging.getLogger("nbdeploy.log")
OPEN_RETRY_S = 0.5


class RegistryProfiles:
    """The reference profiles of the store's versions, the store opened at first need: a database out of reach
    while this process starts must not end it (its log reopens on its own; see LogFile.reopen)."""

    def __init__(self, home: str) -> None:
        self.home = home
        self._profiles: Any = None

    def __call__(self, model: str, version: int) -> dict | None:
        if self._profiles is None:
            self._profiles = registry_profiles(Store(self.home))
        return self._profiles(model, version)


def _status(writer: LogWriter, received: int, token: int | None = None, damaged: int = 0) -> bytes:
    health = writer.health()
    return orjson.dumps({
        "token": token, "settled": received - writer.queued, "dropped": writer.dropped + damaged,
        "dropped_rows": writer.dropped_rows + damaged, "duplicates": writer.duplicates, "pruned": writer.pruned,
        "queued_rows": writer.queued_rows, "ok": health["ok"], "error": health["error"],
        "recoveries": health["recoveries"], "recovered_from": health["recovered_from"],
    }) + b"\n"


def serve(events_fd: int, status_fd: int, writer: LogWriter) -> None:
    """Read frames until ``CLOSE`` or the pipe's end; commit every ``writer.interval`` seconds (sooner when
    ``batch_rows`` rows wait or a flush asks), answer flushes, report now and then. Returns after
    closing the writer."""
    buffered = bytearray()
    received = damaged = 0
    closing = False
    next_step = time.monotonic() + writer.interval
    next_status = 0.0
    tokens: list[int] = []
    while not closing:
        timeout = max(0.0, min(next_step, next_status) - time.monotonic())
        ready, _, _ = select.select([events_fd], [], [], timeout)
        if ready:
            chunk = os.read(events_fd, 4 * 1024 * 1024)
            if not chunk:  # the server is gone: commit what is here and stop
                closing = True
            buffered += chunk
            at = 0
            while len(buffered) - at >= FRAME.size:
                size, kind = FRAME.unpack_from(buffered, at)
                if len(buffered) - at - FRAME.size < size:
                    break
                payload = bytes(buffered[at + FRAME.size:at + FRAME.size + size])
                at += FRAME.size + size
                if kind in (EVENTS, EVENT):
                    try:
                        events = eventcodec.unpack_group(payload) if kind == EVENTS else [eventcodec.unpack(payload)]
                    except ValueError:  # cannot happen between two copies of one program; counted if it does
                        n = struct.unpack_from("<I", payload)[0] if kind == EVENTS and len(payload) >= 4 else 1
                        log.error("%d prediction events arrived damaged; counted as dropped", n)
                        writer.count_dropped(("?", 0, int(time.time() // BUCKET_SECONDS)), n)
                        damaged += n
                        received += n
                        continue
                    received += len(events)
                    for event in events:
                        writer.put(event)
                elif kind == FLUSH:
                    tokens.append(struct.unpack("<Q", payload)[0])
                elif kind == DROPS:
                    for model, version, bucket, n in orjson.loads(payload):
                        writer.count_dropped((model, version, bucket), n)
                elif kind == CLOSE:
                    closing = True
            del buffered[:at]
        now = time.monotonic()
        if tokens or closing or now >= next_step or writer.queued_rows >= writer.batch_rows:
            writer.step()
            next_step = time.monotonic() + writer.interval
            for token in tokens:
                write_all(status_fd, _status(writer, received, token, damaged))
            tokens = []
        if now >= next_status:
            write_all(status_fd, _status(writer, received, None, damaged))
            next_status = now + STATUS_EVERY_S
    writer.close()
    with contextlib.suppress(OSError):
        write_all(status_fd, _status(writer, received, None, damaged))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbdeploy-log-writer")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--status", type=int, required=True)
    parser.add_argument("--max-queue", type=int, required=True)
    parser.add_argument("--batch-rows", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    args = parser.parse_args(argv)
    # The server ends this process by closing the pipe, after its last events: a Ctrl-C or a SIGTERM
    # to the whole process group must not cut it short before it has committed them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = os.environ["NBDEPLOY_HOME"]
    prediction_log = PredictionLog(home, profiles=RegistryProfiles(home), max_queue=args.max_queue,
                                   batch_rows=args.batch_rows, interval=args.interval, start=False)
    parent = os.getppid()
    while prediction_log.file.writer is None:  # the database out of reach as this process starts
        # events wait in the pipe and the server (bounded there) until the log opens: what the server
        # answered before a blip at its start is not lost for it; once open, outages are the writer's
        with contextlib.suppress(OSError):
            write_all(args.status, _status(prediction_log.writer, 0))
        time.sleep(OPEN_RETRY_S)
        if os.getppid() != parent:  # the server is gone
            return 0
        prediction_log.file.reopen()
    serve(args.events, args.status, prediction_log.writer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
