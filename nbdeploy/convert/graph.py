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


def canonical_outputs(model: Any, probabilities: bool, classes: list[Any] | None = None) -> None:
    """Rename outputs to ``label`` (always 1-D) and, when asked, ``probabilities``; drop the rest.

    Probabilities are clipped to [0, 1] (sums of float tree weights can give -1e-7) and each row is
    divided by its sum (a float ``logsumexp`` over naive Bayes' large log-likelihoods leaves rows
    summing to 1 ± 6e-5); both leave faithful probabilities unchanged to float precision. When the
    classes are known, the label is the first class of maximal probability, as scikit-learn picks it: the
    converters' own labels break exact ties (a forest with an even number of trees, k-NN with an
    even k) in their own way.
    """
    from onnx import helper, numpy_helper

    outs = list(model.graph.output)
    for i, out in enumerate(outs):  # free the canonical names for our own outputs
        rename(model, out.name, f"nbdeploy_raw_{i}")
        out.name = f"nbdeploy_raw_{i}"
    first = outs[0]
    label_type = first.type.tensor_type.elem_type
    with_classes = bool(probabilities and classes)
    if not with_classes:
        label_type = computed_type(model, first.name, label_type)
    new_outputs = [helper.make_tensor_value_info(LABEL, label_type, [None])]
    if probabilities:
        proba = outs[1]
        proba_type = computed_type(model, proba.name, proba.type.tensor_type.elem_type)
        dtype = helper.tensor_dtype_to_np_dtype(proba_type)
        model.graph.initializer.extend([numpy_helper.from_array(np.array(0, dtype), "nbdeploy_proba_min"),
                                        numpy_helper.from_array(np.array(1, dtype), "nbdeploy_proba_max"),
                                        numpy_helper.from_array(np.array(np.finfo(dtype).tiny, dtype),
                                                                "nbdeploy_proba_tiny")])
        if _opset(model) >= 13:
            model.graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "nbdeploy_axis"))
            total = helper.make_node("ReduceSum", ["nbdeploy_clipped", "nbdeploy_axis"], ["nbdeploy_total"],
                                     keepdims=1, name="nbdeploy_total")
        else:
            total = helper.make_node("ReduceSum", ["nbdeploy_clipped"], ["nbdeploy_total"], axes=[1], keepdims=1,
                                     name="nbdeploy_total")
        model.graph.node.extend([
            helper.make_node("Clip", [proba.name, "nbdeploy_proba_min", "nbdeploy_proba_max"], ["nbdeploy_clipped"],
                             name="nbdeploy_clip"),
            total,
            helper.make_node("Max", ["nbdeploy_total", "nbdeploy_proba_tiny"], ["nbdeploy_divisor"],
                             name="nbdeploy_divisor"),
            helper.make_node("Div", ["nbdeploy_clipped", "nbdeploy_divisor"], [PROBABILITIES], name="nbdeploy_proba"),
        ])
        dims = [d.dim_value or None for d in proba.type.tensor_type.shape.dim]
        new_outputs.append(helper.make_tensor_value_info(PROBABILITIES, proba_type, [None, *dims[1:]]))
    if with_classes:
        model.graph.initializer.append(numpy_helper.from_array(_class_array(classes, label_type), "nbdeploy_classes"))
        # ArgMax answers the first maximal index: said explicitly from opset 12, ONNX Runtime's choice before
        first = {"select_last_index": 0} if _opset(model) >= 12 else {}
        model.graph.node.extend([
            helper.make_node("ArgMax", [PROBABILITIES], ["nbdeploy_first_max"], axis=1, keepdims=0,
                             name="nbdeploy_argmax", **first),
            helper.make_node("Gather", ["nbdeploy_classes", "nbdeploy_first_max"], [LABEL], axis=0,
                             name="nbdeploy_label"),
        ])
    else:
        shape_name = "nbdeploy_flat_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), shape_name))
        model.graph.node.append(helper.make_node("Reshape", [first.name, shape_name], [LABEL], name="nbdeploy_label"))
    del model.graph.output[:]
    model.graph.output.extend(new_outputs)


def computed_type(model: Any, name: str, declared: int) -> int:
    """The element type the graph computes for ``name``, which may differ from what skl2onnx declared:
    its parser types a step's output before its shape calculator knows better (a double-precision
    step after a text encoder is declared float)."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # inference is best effort (custom domains); keep what was declared
        return declared
    found = next((v for v in inferred.graph.value_info if v.name == name), None)
    elem = found.type.tensor_type.elem_type if found is not None else 0
    return elem or declared


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _class_array(classes: list[Any], elem_type: int) -> np.ndarray:
    """The classes as the converted graph typed its labels (strings, or numbers: bool classes are 0/1)."""
    from onnx import TensorProto, helper

    if elem_type == TensorProto.STRING:
        return np.array([str(c) for c in classes], dtype=object)
    return np.asarray(classes).astype(helper.tensor_dtype_to_np_dtype(elem_type))


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
