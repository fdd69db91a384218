"""ONNX Runtime sessions per model version, kept in step with the store and swapped atomically.

The runtime knows nothing of HTTP. ``sync()`` reads the store, loads and warms any version that
should be served beside the ones serving now, then replaces the whole routing table with one
assignment: a request that already resolved its :class:`LoadedModel` finishes on it (its batcher
drains before it stops), new requests see the new table. A version that fails to load (corrupt
file, hash mismatch, external data) is reported to the store and its aliases keep the version
they served before.

Any other registered version loads on its first request by number (:meth:`Runtime.acquire`), in a
worker thread, exactly as an aliased version loads; up to ``max_loaded_versions`` of these stay
loaded per server process, the least recently used unloaded first (see :mod:`nbdeploy.serve.resident`).
Aliased versions never count against that bound. A swap keeps them: they live beside the routing
table, not in it, and one that an alias comes to point at moves into the table without loading again.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbdeploy.errors import NbdeployError, NotFound, Unavailable, did_you_mean
from nbdeploy.serve.batcher import Batcher, Feeds, Outputs
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.inline import inline_rows
from nbdeploy.serve.metrics import Metrics, VersionStats
from nbdeploy.serve.probe import batch_helps, check_self_contained, nan_refusing_inputs, single_row_ms
from nbdeploy.serve.resident import OnDemand
from nbdeploy.serve.sessions import ModelRunError, ort_session
from nbdeploy.signature import DATATYPE_TO_NUMPY, Signature
from nbdeploy.store import PRODUCTION, Store, VersionRecord, version_number

log = logging.getLogger("nbdeploy.server")
MAX_VERSION_DIGITS = 18

ORT_TO_V2 = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16", "tensor(int8)": "INT8",
    "tensor(uint64)": "UINT64", "tensor(uint32)": "UINT32", "tensor(uint16)": "UINT16",
    "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL", "tensor(string)": "BYTES",
}


@dataclass(eq=False)
class LoadedModel:
    """One version, loaded and warmed, with what the endpoints need to describe and call it."""

    name: str
    version: int
    session: Any
    signature: Signature
    task: str
    classes: list[Any] | None
    outputs: dict[str, str]  # output name -> V2 datatype
    stats: VersionStats = field(default_factory=VersionStats, repr=False)
    no_nan: frozenset[str] = frozenset()  # float inputs (user names) the model cannot take NaN in
    single_row_ms: float = 0.0
    batcher: Batcher | None = field(default=None, repr=False)
    plan: list[tuple[str, str, int, np.dtype, bool]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._names = list(self.outputs)  # naming the outputs saves ORT a lookup per call
        # inputs whose encoder refuses unknown categories take the full check, which names the value
        self.strict = any(s.refuses_unknown for s in self.signature.inputs)
        self.plan = [(s.name, s.onnx_name, s.shape[1] if len(s.shape) > 1 else 1,
                      DATATYPE_TO_NUMPY[s.datatype], False)
                     for s in self.signature.inputs]

    def refuse_nan(self, names: frozenset[str]) -> None:
        """Inputs where a missing value must be refused (see probe.nan_refusing_inputs)."""
        self.no_nan = names
        self.plan = [(n, o, w, d, n in names) for n, o, w, d, _ in self.plan]

    def run(self, feeds: Feeds) -> Outputs:
        """Run the session on ONNX feeds, every output; blocking (worker thread or warm-up only)."""
        try:
            results = self.session.run(self._names, feeds)
        except Exception as exc:
            raise ModelRunError(f"the model could not run on this input: {exc}") from None
        return dict(zip(self._names, results, strict=True))

    async def predict(self, feeds: Feeds, rows: int) -> Outputs:
        """Every output for validated feeds, computed off the event loop (batched when enabled)."""
        assert self.batcher is not None, "predict() needs a started model"
        return await self.batcher.submit(feeds, rows)

    @property
    def batching(self) -> bool:
        return bool(self.batcher and self.batcher.batching)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class NotResident(NotFound):
    """A registered version may exist but is not loaded: :meth:`Runtime.acquire` loads it."""

    def __init__(self, message: str, name: str, number: int) -> None:
        super().__init__(message)
        self.name, self.number = name, number


@dataclass(frozen=True)
class ServedModel:
    aliases: dict[str, int]  # what requests resolve: the store's aliases, less targets that failed
    versions: dict[int, LoadedModel]
    wanted: dict[str, int] = field(default_factory=dict)  # the store's aliases


class Runtime:
    """What the server holds: ``load``/``predict``/``unload`` behind one routing table."""

    def __init__(self, store: Store, config: ServeConfig | None = None, metrics: Metrics | None = None) -> None:
        self.store = store
        self.config = config or ServeConfig()
        self.metrics = metrics or Metrics()
        self._table: dict[str, ServedModel] = {}
        self.failed: dict[tuple[str, int], str] = {}
        self._generation = -1
        self._sync_lock = threading.Lock()
        self.on_demand: OnDemand[LoadedModel] = OnDemand(self.config.max_loaded_versions)

    @property
    def synced(self) -> bool:
        return self._generation >= 0

    def models(self) -> dict[str, ServedModel]:
        return self._table

    def loaded(self) -> list[tuple[str, int, bool]]:
        """(model, version, batching) of every version loaded now (aliased or on demand), in order."""
        return sorted({(name, number, model.batching) for (name, number), model in self._every_loaded().items()})

    def loaded_on_demand(self) -> list[tuple[str, int]]:
        """The versions loaded on demand (no alias points at them), least recently used first."""
        return [key for key, _ in self.on_demand.items()]

    def _every_loaded(self) -> dict[tuple[str, int], LoadedModel]:
        table = self._table
        loaded = {(n, v): m for (n, v), m in self.on_demand.items() if n in table}
        loaded.update({(name, number): model for name, served in table.items()
                       for number, model in served.versions.items()})
        return loaded

    # -- routing ------------------------------------------------------------------------
    def resolve(self, name: str, version: str | None = None) -> LoadedModel:
        """The model answering for ``name`` and a version number or alias (default: production)."""
        served = self._table.get(name)
        if served is None:
            raise NotFound(f"model {name!r} is not served{self._hint(name)}")
        if not version:
            version = PRODUCTION
        # ASCII digits only (str.isdigit() also takes '²' and Arabic-Indic digits); no version has 19 digits,
        # and int() refuses thousands of them with a ValueError
        number = version_number(version) if len(version) <= MAX_VERSION_DIGITS else None
        if number is None:
            if version not in served.aliases:
                raise NotFound(f"model {name!r} has no version or alias {version!r:.80}"
                               f"{did_you_mean(version, served.aliases)}; {self.store.known(name)}")
            number = served.aliases[version]
        loaded = served.versions.get(number)
        if loaded is None:
            if (name, number) in self.failed:
                raise Unavailable(f"model {name!r} version {number} failed to load: {self.failed[(name, number)]}")
            loaded = self.on_demand.get((name, number))
            if loaded is None:
                served_versions = ", ".join(map(str, sorted(served.versions))) or "none"
                if not self.config.max_loaded_versions:
                    raise NotFound(f"model {name!r} version {number} is not served; served versions: "
                                   f"{served_versions} (loading other versions on demand is off: "
                                   "max_loaded_versions is 0)")
                raise NotResident(f"model {name!r} version {number} is not loaded; served versions: "
                                  f"{served_versions}", name, number)
        return loaded

    async def acquire(self, name: str, version: str | None = None) -> LoadedModel:
        """:meth:`resolve`, and a registered version no alias points at is loaded on its first request:
        in a worker thread (never on the event loop), once however many requests wait for it."""
        try:
            return self.resolve(name, version)
        except NotResident as missing:
            key = (missing.name, missing.number)
            return await self.on_demand.load(key, lambda: self._load_on_demand(*key))

    def _load_on_demand(self, name: str, number: int) -> LoadedModel:
        """Load a version for :meth:`acquire` (a worker thread): 404 naming the versions when it does
        not exist, 503 with the reason when it does not load (kept, as for aliased versions)."""
        record = self.store.version(name, number)  # NotFound: "has no version 9; versions: 1, 2; aliases: …"
        loaded = self._try_load(name, number, record)
        if loaded is None:
            with self._sync_lock:
                self._report()
            raise Unavailable(f"model {name!r} version {number} failed to load: {self.failed[(name, number)]}")
        with self._sync_lock:
            served = self._table.get(name)
            current = served.versions.get(number) if served else None
            if served is None or current is not None:  # stopped, or an alias came to point at it meanwhile
                loaded.close()
                if current is None:
                    raise NotFound(f"model {name!r} is not served")
                return current
            evicted = self.on_demand.put((name, number), loaded)
            for model in evicted:
                model.close()  # requests already on it finish first (the batcher drains)
                log.info("unloaded %s version %s (least recently used of the versions loaded on demand)",
                         model.name, model.version)
            self._report()
        log.info("loaded %s version %s on demand", name, number)
        return loaded

    def _hint(self, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, list(self._table), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    # -- keeping in step with the store ---------------------------------------------------
    def sync(self, force: bool = False) -> bool:
        """Bring the table in line with the store; returns True when something changed."""
        with self._sync_lock:
            generation = self.store.generation()
            if generation == self._generation and not force:
                return False
            table: dict[str, ServedModel] = {}
            for name in self.store.serving_models():
                table[name] = self._served(name, self._table.get(name))
            retired = [m for s in self._table.values() for m in s.versions.values()]
            self._table = table  # the swap: one reference assignment
            self._generation = generation
            kept = {id(m) for s in table.values() for m in s.versions.values()}
            # versions loaded on demand stay, unless an alias now serves them, their model is no longer served,
            # or they were deleted (nbdeploy.delete bumps the generation too)
            stored = {key for key, _ in self.on_demand.items() if self._stored(key)}
            for model in self.on_demand.discard(lambda k: k[0] in table and k[1] not in table[k[0]].versions
                                                and k in stored):
                if id(model) not in kept:
                    retired.append(model)
            for model in retired:
                if id(model) not in kept:
                    model.close()
                    log.info("retired %s version %s", model.name, model.version)
            self._report()
            return True

    def _stored(self, key: tuple[str, int]) -> bool:
        """Whether a version is still registered."""
        try:
            self.store.version(*key)
        except NotFound:
            return False
        return True

    def _report(self) -> None:
        """Tell the store what is loaded (aliased and on demand) and what failed; under ``_sync_lock``."""
        states = {key: ("ready", None) for key in self._every_loaded()}
        states.update({k: ("failed", e) for k, e in self.failed.items() if k not in states})
        # several worker processes report one by one; the store aggregates them (registry._aggregate)
        self.store.report_served(self._generation, states,
                                 worker=os.getpid() if self.config.workers > 1 else None)

    def _served(self, name: str, current: ServedModel | None) -> ServedModel:
        wanted = self.store.aliases(name)
        versions: dict[int, LoadedModel] = {}
        aliases: dict[str, int] = {}
        for alias, number in sorted(wanted.items(), key=lambda kv: kv[1]):
            loaded = versions.get(number) or (current.versions.get(number) if current else None)
            loaded = loaded or self.on_demand.peek((name, number)) or self._try_load(name, number)
            before = current.aliases.get(alias) if current else None
            if loaded is None and before is not None and before in current.versions:
                log.warning("%s %s stays on version %s: version %s did not load", name, alias, before, number)
                number, loaded = before, current.versions[before]
            aliases[alias] = number
            if loaded is not None:
                versions[number] = loaded
                if before is not None and before != number:
                    log.info("%s %s now serves version %s (was %s)", name, alias, number, before)
        return ServedModel(aliases=aliases, versions=versions, wanted=wanted)

    def _try_load(self, name: str, number: int, record: VersionRecord | None = None) -> LoadedModel | None:
        key = (name, number)
        if key in self.failed:
            return None
        try:
            loaded = self.load(record or self.store.version(name, number))
        except Exception as exc:  # any load failure leaves the previous version serving
            message = exc.message if isinstance(exc, NbdeployError) else f"{type(exc).__name__}: {exc}"
            log.error("cannot load %s version %s: %s", name, number, message)
            self.failed = {**self.failed, key: message}  # copy on write: routes iterate it meanwhile
            return None
        return loaded

    def load(self, record: VersionRecord) -> LoadedModel:
        """Load one stored version: hash-checked, self-contained ONNX, warmed, measured, started."""
        data = record.onnx_bytes()  # refused unless it is the file that was registered
        check_self_contained(data)
        session = ort_session(data, threads=self.config.ort_threads)
        meta = record.meta
        model = LoadedModel(
            name=record.name, version=record.version, session=session,
            signature=Signature.from_dict(meta["signature"]), task=meta.get("task", "regression"),
            classes=meta.get("classes"),
            outputs={o.name: ORT_TO_V2.get(o.type, "FP32") for o in session.get_outputs()},
            stats=self.metrics.version(record.name, record.version),
        )
        model.single_row_ms = single_row_ms(model.signature, model.run)
        model.refuse_nan(nan_refusing_inputs(model.signature, model.run))
        batching = self.config.batching == "on" or (
            self.config.batching == "auto" and model.single_row_ms >= self.config.batch_threshold_ms
            and batch_helps(model.signature, model.run, model.single_row_ms)
        )
        # a version cheaper to run than a hand-off to its thread answers on the event loop (serve/inline.py);
        # measured in the caller's CPU time, which is the whole cost only with one ONNX Runtime thread
        inline = 0 if batching or self.config.ort_threads != 1 else inline_rows(model.signature, model.run,
                                                                                 model.single_row_ms)
        model.batcher = Batcher(model.run, f"{record.name}:{record.version}", batching=batching,
                                max_rows=self.config.max_batch_rows, max_wait=self.config.max_batch_wait_ms / 1000,
                                max_queue_rows=self.config.max_queue_rows, sizes=model.stats.batches,
                                inline_rows=inline)
        log.info("loaded %s version %s (single row %.3f ms, batching %s, inline up to %d rows)", record.name,
                 record.version, model.single_row_ms, "on" if batching else "off", inline)
        return model

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker after the work queued on it (server shutdown)."""
        models = [m for s in self._table.values() for m in s.versions.values()] + self.on_demand.close()
        for model in models:
            model.close()
        for model in models:
            if model.batcher is not None:
                model.batcher.join(timeout)

    def unload(self, name: str) -> None:
        with self._sync_lock:
            table = dict(self._table)
            served = table.pop(name, None)
            self._table = table
            dropped = self.on_demand.discard(lambda k: k[0] != name)
        for model in [*(served.versions.values() if served else ()), *dropped]:
            model.close()

