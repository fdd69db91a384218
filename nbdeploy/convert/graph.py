"""Edits of a converted ONNX graph: the inputs clients send in front, the outputs nbdeploy serves behind.

* Inputs keep the types clients send (``BOOL``, ``INT64``, ``BYTES``, ``FP32``/``FP64``); where
  the converted graph computes in another type, a ``Cast`` sits right behind the input.
* Outputs are renamed ``label`` (``[n]``) and, for classifiers with probabilities,
  ``probabilities`` (``[n, n_classes]``); other outputs (decision scores, cluster distances) go.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy.signature import Signature

LABEL = "label"
PROBABILITIES = "probabilities"
FRONT = "nbdeploy_features"


def proto_type(datatype: str) -> int:
    from onnx import TensorProto

    return {"FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
            "INT64": TensorProto.INT64, "BOOL": TensorProto.BOOL, "BYTES": TensorProto.STRING}[datatype]


def typed_inputs(model: Any, signature: Signature) -> list[str]:
    """Give graph input ``i`` the type of ``signature.inputs[i]``, casting behind it; returns input names."""
    from onnx import helper

    inputs = list(model.graph.input)
    if len(inputs) != len(signature.inputs):
        raise ValueError(f"the converted graph has {len(inputs)} inputs for {len(signature.inputs)} columns")
    casts = []
    for inp, spec in zip(inputs, signature.inputs, strict=True):
        want = proto_type(spec.datatype)
        have = inp.type.tensor_type.elem_type
        if want == have:
            continue
        inner = f"{inp.name}__nbdeploy_cast"
        rename(model, inp.name, inner)
        casts.append(helper.make_node("Cast", [inp.name], [inner], to=have, name=f"nbdeploy_cast_{inp.name}"))
        inp.type.tensor_type.elem_type = want
    for node in reversed(casts):
        model.graph.node.insert(0, node)
    return [i.name for i in inputs]


def prepend_concat(model: Any, signature: Signature) -> list[str]:
    """Give an estimator that takes one ``[n, k]`` tensor one ``[n, 1]`` input per column, concatenated."""
    from onnx import helper

    front = model.graph.input[0]
    elem = front.type.tensor_type.elem_type
    nodes, names = [], []
    for spec in signature.inputs:
        proto = proto_type(spec.datatype)
        name = spec.onnx_name
        if proto != elem:
            nodes.append(helper.make_node("Cast", [name], [f"{name}_cast"], to=elem, name=f"cast_{name}"))
            names.append(f"{name}_cast")
        else:
            names.append(name)
        model.graph.input.append(helper.make_tensor_value_info(name, proto, [None, 1]))
    nodes.append(helper.make_node("Concat", names, [front.name], axis=1, name="nbdeploy_concat"))
    model.graph.input.remove(front)
    for node in reversed(nodes):
        model.graph.node.insert(0, node)
    return [s.onnx_name for s in signature.inputs]


def canonical_outputs(model: Any, probabilities: bool) -> None:
    """Rename outputs to ``label`` (always 1-D) and, when asked, ``probabilities``; drop the rest."""
    from onnx import helper, numpy_helper

    outs = list(model.graph.output)
    for i, out in enumerate(outs):  # free the canonical names for our own outputs
        rename(model, out.name, f"nbdeploy_raw_{i}")
        out.name = f"nbdeploy_raw_{i}"
    first = outs[0]
    shape_name = "nbdeploy_flat_shape"
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), shape_name))
    model.graph.node.append(helper.make_node("Reshape", [first.name, shape_name], [LABEL], name="nbdeploy_label"))
    new_outputs = [helper.make_tensor_value_info(LABEL, first.type.tensor_type.elem_type, [None])]
    if probabilities:
        proba = outs[1]
        model.graph.node.append(helper.make_node("Identity", [proba.name], [PROBABILITIES], name="nbdeploy_proba"))
        dims = [d.dim_value or None for d in proba.type.tensor_type.shape.dim]
        new_outputs.append(helper.make_tensor_value_info(PROBABILITIES, proba.type.tensor_type.elem_type,
                                                         [None, *dims[1:]]))
    del model.graph.output[:]
    model.graph.output.extend(new_outputs)


def rename(model: Any, old: str, new: str) -> None:
    """Rename a value everywhere nodes read or write it."""
    for node in model.graph.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name == old:
                    seq[i] = new


def portable_text(model: Any) -> None:
    """Make text nodes compute what Python does, on any machine.

    * ``StringNormalizer``: lowercase under ``C.UTF-8`` (present on every glibc system) instead of
      skl2onnx's ``en_US.UTF-8``, which ONNX Runtime cannot load where that locale is not installed;
      ``C.UTF-8`` lowercases Unicode like ``str.lower``.
    * ``Tokenizer``: skl2onnx turns scikit-learn's default ``(?u)\\b\\w\\w+\\b`` into the ASCII-only
      ``[a-zA-Z0-9_]+``, which cuts "école" into "cole"; ``[\\p{L}\\p{N}_]+`` is Python's Unicode ``\\w``.
    """
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "StringNormalizer":
            _set_attribute(node, helper.make_attribute("locale", "C.UTF-8"))
        elif node.op_type == "Tokenizer":
            expr = next((a.s for a in node.attribute if a.name == "tokenexp"), None)
            if expr == b"[a-zA-Z0-9_]+":
                _set_attribute(node, helper.make_attribute("tokenexp", r"[\p{L}\p{N}_]+"))


def _set_attribute(node: Any, attribute: Any) -> None:
    kept = [a for a in node.attribute if a.name != attribute.name]
    del node.attribute[:]
    node.attribute.extend([*kept, attribute])
