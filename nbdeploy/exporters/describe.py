"""What every export's README says about the model: inputs, outputs and one example request."""

from __future__ import annotations

import json
from typing import Any

from nbdeploy.signature import MISSING_STRING, Signature
from nbdeploy.store import VersionRecord

_ZERO = {"BYTES": "", "BOOL": False}


def example_inputs(record: VersionRecord, onnx_names: bool = False) -> list[dict[str, Any]]:
    """One example row as V2 ``inputs``, named as nbdeploy's endpoint takes them (user names) or as
    the ONNX graph (and so Triton) names them."""
    signature = Signature.from_dict(record.meta["signature"])
    stored = {i["name"]: i for i in record.meta.get("example") or []}
    inputs = []
    for spec in signature.inputs:
        width = spec.shape[1] if len(spec.shape) > 1 else 1
        item = stored.get(spec.name) or {
            "name": spec.name, "datatype": spec.datatype, "shape": [1, width],
            "data": [spec.categories[0] if spec.categories else _ZERO.get(spec.datatype, 0)] * width,
        }
        item = {**item, "datatype": spec.datatype}
        if onnx_names:
            # Triton checks the full shape; JSON has no NaN, and a null is no FP32 for Triton.
            data = [0 if v is None and spec.datatype != "BYTES" else v for v in item["data"]]
            item = {**item, "name": spec.onnx_name, "shape": [len(data) // width, width], "data": data}
        inputs.append(item)
    return inputs


def request_json(record: VersionRecord, onnx_names: bool = False) -> str:
    """``{"inputs": [...]}``, one input a line."""
    lines = ",\n".join("    " + json.dumps(i) for i in example_inputs(record, onnx_names))
    return '{\n  "inputs": [\n' + lines + "\n  ]\n}\n"


def inputs_table(record: VersionRecord, triton: bool = False) -> str:
    """Markdown: each input as nbdeploy names it, as the ONNX graph (Triton) names it, type, shape and
    what stands for a missing value (in JSON for nbdeploy; as a tensor value for Triton)."""
    signature = Signature.from_dict(record.meta["signature"])
    rows = ["| input (nbdeploy endpoint) | ONNX / Triton input | datatype | shape | missing value |",
            "|---|---|---|---|---|"]
    shown = {"null": "NaN" if triton else "`null` (NaN)", MISSING_STRING: f"`{MISSING_STRING}`"}
    for spec in signature.inputs:
        missing = shown.get(spec.missing or "", "not accepted")
        rows.append(f"| `{spec.name}` | `{spec.onnx_name}` | {spec.datatype} | {list(spec.shape)} | {missing} |")
    return "\n".join(rows)


def outputs_text(record: VersionRecord) -> str:
    meta = record.meta
    lines = ["- `label`: the predicted class (classifiers), cluster or value, shape `[n]`."]
    if "probabilities" in (meta.get("outputs") or []):
        lines.append(f"- `probabilities`: class probabilities, shape `[n, {len(meta.get('classes') or [])}]`, "
                     f"columns in the order of the classes {meta.get('classes')}.")
    return "\n".join(lines)


def summary(record: VersionRecord) -> str:
    meta = record.meta
    made = meta.get("created_by") or {}
    libs = ", ".join(f"{k} {v}" for k, v in made.items())
    return (f"Model `{record.name}` version {record.version} ({meta.get('task', 'model')}), "
            f"sha256 `{record.sha256[:16]}…` of `model.onnx`" + (f"; made with {libs}." if libs else "."))
