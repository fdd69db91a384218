"""The ``triton`` export: a Triton Inference Server model repository for the ONNX Runtime backend.

Layout::

    NAME/config.pbtxt           platform onnxruntime_onnx; inputs and outputs from the ONNX graph
    NAME/VERSION/model.onnx     the stored file (no ZipMap: probabilities are a plain tensor)
    request.json                one example V2 request, named as Triton names the inputs
    README.md                   how to serve it, and which Triton input is which column

``max_batch_size: 0``: every input and output declares its full shape with the batch dimension
as -1 (skl2onnx's shapes: ``[-1, 1]`` per column, ``[-1, k]`` for an array, ``label`` ``[-1]``).
A 1-D ``label`` leaves no per-row dims for Triton's batching, so the model batches itself.
Input names are the ONNX graph's (column names made safe, ``sepal length (cm)`` ->
``sepal_length__cm_``); the README maps them back to the columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nbdeploy.errors import ConversionError
from nbdeploy.exporters import describe
from nbdeploy.store import VersionRecord

PLATFORM = "onnxruntime_onnx"

# onnx.TensorProto element types -> Triton model-config data types.
TRITON_TYPES = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
    7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
    13: "TYPE_UINT64",
}


def tensors(graph_values: Any, kind: str) -> list[tuple[str, str, list[int]]]:
    """(name, Triton data type, dims with -1 for any symbolic or unknown dimension) per graph value."""
    out = []
    for value in graph_values:
        if value.type.WhichOneof("value") != "tensor_type":
            raise ConversionError(f"ONNX {kind} {value.name!r} is not a tensor (a ZipMap?); Triton needs tensors: "
                                  "redeploy the model with this version of nbdeploy")
        tensor = value.type.tensor_type
        if tensor.elem_type not in TRITON_TYPES:
            raise ConversionError(f"ONNX {kind} {value.name!r} has element type {tensor.elem_type}, "
                                  "which Triton's ONNX Runtime backend does not take")
        if not tensor.HasField("shape"):
            raise ConversionError(f"ONNX {kind} {value.name!r} has no declared shape")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim]
        out.append((value.name, TRITON_TYPES[tensor.elem_type], dims))
    return out


def config_pbtxt(record: VersionRecord) -> str:
    """The model configuration, in protobuf text format."""
    import onnx

    model = onnx.load_model_from_string(record.onnx_bytes())
    if any(node.op_type == "ZipMap" for node in model.graph.node):
        raise ConversionError(f"{record.name!r} version {record.version} ends in a ZipMap, which Triton cannot "
                              "serve; redeploy it with this version of nbdeploy (no ZipMap)")
    lines = [f'name: "{_escape(record.name)}"', f'platform: "{PLATFORM}"', "max_batch_size: 0"]
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        initializers = {i.name for i in model.graph.initializer}
        entries = [t for t in tensors(values, kind) if t[0] not in initializers]
        lines.append(f"{kind} [")
        lines.append(",\n".join(_entry(name, dtype, dims) for name, dtype, dims in entries))
        lines.append("]")
    lines.append("instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]")
    return "\n".join(lines) + "\n"


def write_model(record: VersionRecord, repository: Path) -> Path:
    """``repository/NAME/config.pbtxt`` and ``repository/NAME/VERSION/model.onnx``; returns ``NAME/``."""
    model_dir = repository / record.name
    (model_dir / str(record.version)).mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(record))
    (model_dir / str(record.version) / "model.onnx").write_bytes(record.onnx_bytes())
    return model_dir


def write_repository(record: VersionRecord, directory: Path) -> None:
    write_model(record, directory)
    (directory / "request.json").write_text(describe.request_json(record, onnx_names=True))
    (directory / "README.md").write_text(readme(record))


def readme(record: VersionRecord, repository: str = ".") -> str:
    name, version = record.name, record.version
    return f"""# `{name}` version {version}: a Triton model repository

{describe.summary(record)}

`{repository}/{name}/config.pbtxt` declares the ONNX Runtime backend (`platform: "{PLATFORM}"`) with
the ONNX graph's inputs and outputs; `{repository}/{name}/{version}/model.onnx` is the model.

## Serve it with Triton

```bash
docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/{repository}":/models \\
  nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models
curl -s http://127.0.0.1:8000/v2/models/{name}/ready
curl -s -X POST http://127.0.0.1:8000/v2/models/{name}/infer -H 'Content-Type: application/json' -d @request.json
```

## Inputs: Triton names them as the ONNX graph does

Triton takes the ONNX graph's input names, which are the deployed column names made safe for ONNX
(second column below), not the names nbdeploy's own endpoint takes (first column). Shapes are full
shapes with the batch dimension first (`max_batch_size: 0`): send `[n, 1]` per column.

{describe.inputs_table(record, triton=True)}

Missing numbers: JSON has no NaN and Triton does not read `null` as one, so send rows with missing
values as binary tensor data (tritonclient's default) or over gRPC. Text columns take the string in
the last column as their missing value.

## Outputs

{describe.outputs_text(record)}

`request.json` is one example request with the inputs named for Triton.
"""


def _entry(name: str, dtype: str, dims: list[int]) -> str:
    return (f'  {{\n    name: "{_escape(name)}"\n    data_type: {dtype}\n'
            f'    dims: [ {", ".join(map(str, dims))} ]\n  }}')


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
