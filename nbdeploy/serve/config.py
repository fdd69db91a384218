"""Server settings: one frozen dataclass, filled from defaults, ``NBDEPLOY_*`` variables and CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from nbdeploy.errors import InvalidInput
from nbdeploy.serve.origins import parse_allowed
from nbdeploy.store.settings import read_env

BATCHING_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class ServeConfig:
    """Everything a server can be tuned with. Each field ``x`` is also ``NBDEPLOY_X`` in the environment."""

    batching: str = "auto"
    """``auto``: batch a version when batching measurably helps it at warm-up (see runtime.batch_helps);
    ``on``/``off``: for every version."""
    batch_threshold_ms: float = 0.3
    """``auto`` never batches a version whose single-row inference takes less than this."""
    max_batch_rows: int = 64
    """Most rows one ONNX call takes when batching (a single larger request still runs alone)."""
    max_batch_wait_ms: float = 1.0
    """How long a batch may wait for more requests, and only while requests keep arriving together."""
    max_queue_rows: int = 4096
    """Rows waiting or running per version; beyond it requests get 503 with Retry-After."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Request bodies over this get 413 (by Content-Length, or counted as chunks arrive)."""
    max_elements: int = 1_000_000
    """Most tensor elements (or table cells) one request may carry."""
    ort_threads: int = 1
    """ONNX Runtime intra-op threads per session."""
    drain_seconds: float = 0.2
    """On SIGTERM, readiness answers 503 for this long before the server stops taking connections."""
    workers: int = 1
    """Server processes sharing the one listening socket (each with its own runtime, batcher and log writer)."""
    header_timeout_s: float = 10.0
    """A connection whose request headers are not complete this long after it opened (or after the previous
    response) gets 408 and is closed: trickled headers cannot hold sockets."""
    body_timeout_s: float = 30.0
    """A request body not complete this long after its headers gets 408 and the connection is closed."""
    max_connections: int = 1000
    """Open connections per server process; beyond it a new connection gets 503 with Retry-After at once."""
    max_loaded_versions: int = 4
    """Versions no alias points at that stay loaded per server process after a request named them by number;
    beyond it the least recently used is unloaded. Aliased versions do not count. 0: serve aliased versions only."""
    alert_interval: float = 10.0
    """Seconds between the server's judgements of each served model's alert level (recorded when it changes,
    then sent to the model's webhook); 0: the server judges and sends no alerts."""
    allowed_origins: str = ""
    """Web origins (``scheme://host[:port]``, comma-separated) whose pages may call the server from a
    browser, with CORS answers; ``*`` for any, only with a token. Empty: the server's own pages only."""

    def __post_init__(self) -> None:
        if self.batching not in BATCHING_MODES:
            raise InvalidInput(f"batching must be one of {', '.join(BATCHING_MODES)}, got {self.batching!r}")
        if isinstance(self.allowed_origins, (list, tuple)):  # from Python: a list of origins reads naturally
            object.__setattr__(self, "allowed_origins", ",".join(self.allowed_origins))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, str):
                if not isinstance(value, str):
                    raise InvalidInput(f"{f.name} must be a string, got {value!r}")
            elif not isinstance(value, (int, float)) or value < 0:
                raise InvalidInput(f"{f.name} must be a non-negative number, got {value!r}")
        if min(self.max_batch_rows, self.max_body_bytes, self.max_elements, self.workers, self.max_connections) < 1:
            raise InvalidInput("max_batch_rows, max_body_bytes, max_elements, workers and max_connections "
                               "must be at least 1")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise InvalidInput("header_timeout_s and body_timeout_s must be positive numbers of seconds")
        parse_allowed(self.allowed_origins)  # refuses what is not an origin, at start-up

    @property
    def origins(self) -> frozenset[str]:
        """``allowed_origins`` as normalized origins (see :mod:`nbdeploy.serve.origins`)."""
        return parse_allowed(self.allowed_origins)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> ServeConfig:
        """Defaults, then ``NBDEPLOY_<FIELD>`` variables, then ``overrides`` that are not None."""
        values = read_env(cls, "NBDEPLOY_", environ)
        config = cls(**values)
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})
