"""The one way nbdeploy opens an ONNX Runtime session: the server, the in-process predictor and the
fidelity check all run a model with the same options, so they compute the same answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbdeploy.errors import NbdeployError

if TYPE_CHECKING:
    import onnxruntime


def ort_session(onnx_bytes: bytes, *, threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU session over a serialized model: ``threads`` threads inside an operator, one between
    operators (the graph runs sequentially, so a second pool would only idle).

    ``onnxruntime`` is imported on first use, so importing the server's modules stays cheap.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


class ModelRunError(NbdeployError):
    """ONNX Runtime refused inputs that passed validation (for example an unseen category): 422."""

    status = 422


def session_runner(session: onnxruntime.InferenceSession) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``feeds -> every output by name``, raising :class:`ModelRunError` when ONNX Runtime refuses."""
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, Any]) -> dict[str, Any]:
        try:
            results = session.run(names, feeds)
        except Exception as exc:
            raise ModelRunError(f"the model could not run on this input: {exc}") from None
        return dict(zip(names, results, strict=True))

    return run
