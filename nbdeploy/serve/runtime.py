"""ONNX Runtime sessions per model version, kept in step with the store and swapped atomically.

The runtime knows nothing of HTTP. ``sync()`` reads the store, loads and warms any version that
should be served, then replaces the whole routing table with one assignment: a request that
already resolved its :class:`LoadedModel` finishes on it, new requests see the new table.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbdeploy.errors import NbdeployError, NotFound, Unavailable
from nbdeploy.signature import NUMPY_OF, Signature
from nbdeploy.store import PRODUCTION, Store, VersionRecord

log = logging.getLogger("nbdeploy.server")

ORT_TO_V2 = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16", "tensor(int8)": "INT8",
    "tensor(uint64)": "UINT64", "tensor(uint32)": "UINT32", "tensor(uint16)": "UINT16",
    "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL", "tensor(string)": "BYTES",
}


@dataclass
class LoadedModel:
    """One version, loaded and warmed, with what the endpoints need to describe it."""

    name: str
    version: int
    session: Any
    signature: Signature
    task: str
    classes: list[Any] | None
    outputs: dict[str, str]  # output name -> V2 datatype
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or list(self.outputs)
        results = self.session.run(names, feeds)
        return dict(zip(names, results, strict=True))


@dataclass(frozen=True)
class ServedModel:
    aliases: dict[str, int]
    versions: dict[int, LoadedModel]


class Runtime:
    """What the server holds: ``load``/``predict``/``unload`` behind one routing table."""

    def __init__(self, store: Store, threads: int = 1) -> None:
        self.store = store
        self.threads = threads
        self._table: dict[str, ServedModel] = {}
        self._failed: dict[tuple[str, int], str] = {}
        self._generation = -1
        self._sync_lock = threading.Lock()

    @property
    def synced(self) -> bool:
        return self._generation >= 0

    def models(self) -> dict[str, ServedModel]:
        return self._table

    # -- routing ------------------------------------------------------------------------
    def resolve(self, name: str, version: str | None = None) -> LoadedModel:
        """The model answering for ``name`` and a version number or alias (default: production)."""
        served = self._table.get(name)
        if served is None:
            raise NotFound(f"model {name!r} is not served{self._hint(name)}")
        if version is None or version == "":
            version = PRODUCTION
        if version.isdigit():
            number = int(version)
        elif version in served.aliases:
            number = served.aliases[version]
        else:
            raise NotFound(f"model {name!r} has no version or alias {version!r}; "
                           f"aliases: {', '.join(sorted(served.aliases)) or 'none'}")
        loaded = served.versions.get(number)
        if loaded is None:
            if (name, number) in self._failed:
                raise Unavailable(f"model {name!r} version {number} failed to load: {self._failed[(name, number)]}")
            raise NotFound(f"model {name!r} version {number} is not served; "
                           f"served versions: {', '.join(map(str, sorted(served.versions)))}")
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
                aliases = self.store.aliases(name)
                wanted = set(aliases.values())
                versions: dict[int, LoadedModel] = {}
                current = self._table.get(name)
                for number in sorted(wanted):
                    if current and number in current.versions:
                        versions[number] = current.versions[number]
                        continue
                    loaded = self._try_load(self.store.version(name, number))
                    if loaded is not None:
                        versions[number] = loaded
                table[name] = ServedModel(aliases=aliases, versions=versions)
            self._table = table  # the swap: one reference assignment
            self._generation = generation
            states = {(n, v): ("ready", None) for n, m in table.items() for v in m.versions}
            states.update({k: ("failed", e) for k, e in self._failed.items() if k not in states})
            self.store.report_served(generation, states)
            return True

    def _try_load(self, record: VersionRecord) -> LoadedModel | None:
        key = (record.name, record.version)
        if key in self._failed:
            return None
        try:
            loaded = self.load(record)
        except Exception as exc:  # any load failure leaves the previous version serving
            message = exc.message if isinstance(exc, NbdeployError) else f"{type(exc).__name__}: {exc}"
            log.error("cannot load %s version %s: %s", record.name, record.version, message)
            self._failed[key] = message
            return None
        return loaded

    def load(self, record: VersionRecord) -> LoadedModel:
        """Load one stored version: hash-checked, self-contained ONNX, warmed with one row."""
        import onnx
        import onnxruntime as ort

        data = record.onnx_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise NbdeployError(f"{record.onnx_path} does not match its recorded sha256", 500)
        proto = onnx.load_model_from_string(data)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            raise NbdeployError("the ONNX file refers to external data, which nbdeploy does not load", 500)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        meta = record.meta
        loaded = LoadedModel(
            name=record.name,
            version=record.version,
            session=session,
            signature=Signature.from_dict(meta["signature"]),
            task=meta.get("task", "regression"),
            classes=meta.get("classes"),
            outputs={o.name: ORT_TO_V2.get(o.type, "FP32") for o in session.get_outputs()},
        )
        loaded.run(warmup_feeds(loaded.signature))
        log.info("loaded %s version %s", record.name, record.version)
        return loaded

    def unload(self, name: str) -> None:
        with self._sync_lock:
            table = dict(self._table)
            table.pop(name, None)
            self._table = table


def warmup_feeds(signature: Signature) -> dict[str, np.ndarray]:
    """One plausible row for each input, to run a model once before it takes traffic."""
    feeds = {}
    for spec in signature.inputs:
        width = spec.shape[1] if len(spec.shape) > 1 else 1
        if spec.datatype == "BYTES":
            value = spec.categories[0] if spec.categories else ""
            feeds[spec.onnx_name] = np.full((1, width), value, dtype=object)
        else:
            feeds[spec.onnx_name] = np.zeros((1, width), dtype=NUMPY_OF[spec.datatype])
    return feeds
