"""ORT dynamic int8 for the exported file of a model with ``DynamicQuantLinear`` layers.

The post-export hook of that kind: the exporter writes the float graph, and this rewrites
exactly the MatMul nodes of the converted layers with onnxruntime's ``quantize_dynamic``.
onnx and onnxruntime are imported when it runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from compresskit.errors import CompressKitError


def _matmul_weights(model: Any) -> dict[bytes, list[str]]:
    """MatMul nodes whose second input is a constant, keyed by that constant's bytes as
    the transposed (out, in) float32 weight a Linear holds (several nodes share a key when
    layers hold equal weights: the copies of ``nn.TransformerEncoder``'s layer)."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    found: dict[bytes, list[str]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        source = node.input[1]
        if source in constants:
            value = constants[source]
            if value.ndim == 2:
                key = np.ascontiguousarray(value.T, dtype=np.float32).tobytes()
                found.setdefault(key, []).append(node.name)
        elif source in producers and producers[source].op_type == "Transpose":
            inner = producers[source].input[0]
            if inner in constants and constants[inner].ndim == 2:
                value = np.ascontiguousarray(constants[inner], dtype=np.float32)
                found.setdefault(value.tobytes(), []).append(node.name)
    return found


def ort_dynamic_quantization(path: Path, layers: Sequence[nn.Module]) -> str:
    """Rewrite the float export at ``path`` with ORT's ``quantize_dynamic`` (int8
    per-channel weights, uint8 activations at run time) on the MatMul nodes of ``layers``
    only, found by their weights. Every layer must be found: the file must compute what
    the torch model does."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path))
    by_weight = _matmul_weights(model)
    nodes: list[str] = []
    missing: list[Any] = []
    for module in layers:
        layer: Any = module
        key = layer.weight.detach().cpu().float().contiguous().numpy().tobytes()
        if by_weight.get(key):
            nodes.append(by_weight[key].pop(0))
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
