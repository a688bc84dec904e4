"""Int8 in the exported file: constant folding for QDQ, ORT dynamic quantization for
dynamic int8 layers, and a clear refusal for layers ONNX cannot hold (bitsandbytes).

Folding: constant subgraphs of a QDQ ONNX file are folded so weights are stored as int8.

The legacy exporter writes ``QuantizeLinear(float weight)`` and the bias chain
``Div -> Round -> Cast`` on initializers. Every node whose inputs are all constant,
except DequantizeLinear (``DQ(int8 constant)`` is exactly what ORT's QDQ fusions look
for), is evaluated with ``onnx.reference`` and replaced by its result.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from compresskit.errors import CompressKitError

_NEVER_FOLD = {"DequantizeLinear"}


def _evaluate(node: Any, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" for k in range(len(node.input))]
    single = helper.make_node(
        node.op_type,
        [name if source else "" for name, source in zip(names, node.input, strict=True)],
        [f"o{k}" for k in range(len(node.output))],
        domain=node.domain,
    )
    single.attribute.extend(node.attribute)
    present = [
        (name, value)
        for name, value, source in zip(names, inputs, node.input, strict=True)
        if source and value is not None
    ]
    graph = helper.make_graph(
        [single],
        "fold",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for n, v in present
        ],
        [
            helper.make_tensor_value_info(f"o{k}", TensorProto.UNDEFINED, None)
            for k in range(len(node.output))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return list(ReferenceEvaluator(model).run(None, dict(present)))


def fold_constants(model: Any) -> int:
    """Fold constant nodes of ``model`` (an onnx.ModelProto) in place; returns how many."""
    from onnx import numpy_helper

    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    origin: dict[str, str] = {}  # folded tensor -> the parameter it was computed from
    parameters = set(constants)
    kept, folded = [], 0
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            continue
        if (
            node.op_type in _NEVER_FOLD
            or node.domain not in ("", "ai.onnx")
            or not all((not name) or name in constants for name in node.input)
        ):
            kept.append(node)
            continue
        outputs = _evaluate(node, [constants[n] if n else None for n in node.input], opset)
        first = node.input[0] if node.input else ""
        for name, value in zip(node.output, outputs, strict=False):
            constants[name] = np.asarray(value)
            if first in parameters or first in origin:
                origin[name] = origin.get(first, first)
        folded += 1
    # Readable names: DQ(x) where x was folded from parameter P becomes "P_quantized".
    rename: dict[str, str] = {}
    for node in kept:
        source = node.input[0] if node.input else ""
        if node.op_type == "DequantizeLinear" and source in origin and source not in rename:
            new = origin[source] + "_quantized"
            if new not in constants:
                rename[source] = new
    for old, new in rename.items():
        constants[new] = constants.pop(old)
    for node in kept:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(
        numpy_helper.from_array(constants[name], name) for name in sorted(used) if name in constants
    )
    value_info = [v for v in graph.value_info if v.name not in constants]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    return folded


class NotExportableError(CompressKitError):
    """The model holds layers ONNX cannot represent (e.g. bitsandbytes int8/4-bit)."""


def not_exportable_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be exported to ONNX, or None. bitsandbytes layers keep their
    weights in a packed format with CPU/CUDA kernels of their own and no ONNX mapping."""
    for name, module in model.named_modules():
        if type(module).__module__.startswith("bitsandbytes"):
            return (
                f"layer {name!r} is a bitsandbytes {type(module).__name__}, which has no ONNX "
                "form; measure this model on a torch target (e.g. torch-cpu), or use the "
                "quantize / quantize_dynamic pass for an int8 ONNX model"
            )
    return None


@contextmanager
def export_preparation(model: nn.Module) -> Iterator[Callable[[Path], str | None]]:
    """Put layers that export as float (dynamic int8) in export mode for the duration;
    yields the step to run on the written file, which returns what it did (or None)."""
    from compresskit.quantization.dynamic import dynamic_layers

    layers = dynamic_layers(model)
    for layer in layers:
        layer.set_export_mode(True)
    try:
        yield (
            (lambda path: ort_dynamic_quantization(path, layers)) if layers else (lambda path: None)
        )
    finally:
        for layer in layers:
            layer.set_export_mode(False)


def _matmul_weights(model: Any) -> dict[bytes, str]:
    """MatMul nodes whose second input is a constant, keyed by that constant's bytes as
    the transposed (out, in) float32 weight a Linear holds."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    found: dict[bytes, str] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        source = node.input[1]
        if source in constants:
            value = constants[source]
            if value.ndim == 2:
                found[np.ascontiguousarray(value.T, dtype=np.float32).tobytes()] = node.name
        elif source in producers and producers[source].op_type == "Transpose":
            inner = producers[source].input[0]
            if inner in constants and constants[inner].ndim == 2:
                value = np.ascontiguousarray(constants[inner], dtype=np.float32)
                found[value.tobytes()] = node.name
    return found


def ort_dynamic_quantization(path: Path, layers: list[Any]) -> str:
    """Rewrite the float export at ``path`` with ORT's ``quantize_dynamic`` (int8
    per-channel weights, uint8 activations at run time) on the MatMul nodes of ``layers``
    only, found by their weights. Every layer must be found: the file must compute what
    the torch model does."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path))
    by_weight = _matmul_weights(model)
    nodes, missing = [], []
    for layer in layers:
        key = layer.weight.detach().cpu().float().contiguous().numpy().tobytes()
        if key in by_weight:
            nodes.append(by_weight[key])
        else:
            missing.append(layer)
    if missing:
        raise CompressKitError(
            f"dynamic int8 export: {len(missing)} of {len(layers)} quantized Linear layers "
            f"were not found as MatMul nodes in the float export (first: "
            f"{type(missing[0]).__name__} of shape {tuple(missing[0].weight.shape)}); add them "
            "to quantize_dynamic's exclude"
        )
    out = path.with_name(path.stem + ".dynamic.onnx")
    # The dynamo exporter's value_info can disagree with ONNX shape inference (seen on
    # Gemm outputs), which quantize_dynamic runs strictly; shapes are re-inferred anyway.
    del model.graph.value_info[:]
    onnx.save(model, str(path))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing": the float export needs none
    try:
        quantize_dynamic(
            str(path),
            str(out),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=nodes,
            extra_options={"MatMulConstBOnly": True},
        )
        os.replace(out, path)
    finally:
        root.setLevel(level)
        out.unlink(missing_ok=True)
    return (
        f"ort-dynamic: float export rewritten by onnxruntime quantize_dynamic (int8 per-channel "
        f"weights, uint8 activations quantized at run time) on {len(nodes)} MatMul nodes"
    )
