"""Int8 in the exported file: constant folding for QDQ, the module kinds' export hooks
(ORT dynamic quantization for dynamic int8 layers), and a clear refusal for layers ONNX
cannot hold (bitsandbytes), all asked of the module-kind registry.

Folding: constant subgraphs of a QDQ ONNX file are folded so weights are stored as int8.

The legacy exporter writes ``QuantizeLinear(float weight)`` and the bias chain
``Div -> Round -> Cast`` on initializers. Every node whose inputs are all constant,
except DequantizeLinear (``DQ(int8 constant)`` is exactly what ORT's QDQ fusions look
for), is evaluated with ``onnx.reference`` and replaced by its result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.kinds import PostExport, kinds_in

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


def share_quantizers(model: Any) -> int:
    """Merge QuantizeLinear nodes of ``model`` (an onnx.ModelProto, in place) that
    quantize the same tensor with equal scale and zero point; returns how many went.

    Layers that read one input (attention's query, key and value projections) each
    quantize it with their own observer; calibrated on the same tensor, the observers
    agree, and the exporter writes three QuantizeLinear nodes where one does the work.
    The DequantizeLinear nodes stay one per consumer, as ORT's QDQ fusions want them.
    """
    from onnx import numpy_helper

    graph = model.graph
    # Only scales and zero points are compared: leave the (large) weights unread.
    wanted = {name for n in graph.node if n.op_type == "QuantizeLinear" for name in n.input[1:]}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.name in wanted}
    outputs = {o.name for o in graph.output}

    def key(node: Any) -> tuple | None:
        if node.output[0] in outputs:
            return None  # a graph output keeps its own node
        params = [constants.get(name) for name in node.input[1:]]
        if any(p is None for p in params):
            return None  # a computed scale: nothing to compare
        values = tuple((p.dtype.str, p.shape, p.tobytes()) for p in params if p is not None)
        attributes = tuple(sorted(a.SerializeToString() for a in node.attribute))
        return (node.input[0], values, attributes)

    kept: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
        signature = key(node) if node.op_type == "QuantizeLinear" else None
        if signature is not None and signature in kept:
            rename[node.output[0]] = kept[signature]
            continue
        if signature is not None:
            kept[signature] = node.output[0]
        nodes.append(node)
    merged = len(graph.node) - len(nodes)
    if merged:
        del graph.node[:]
        graph.node.extend(nodes)
    return merged


class NotExportableError(CompressKitError):
    """The model holds layers ONNX cannot represent (e.g. bitsandbytes int8/4-bit)."""


def not_exportable_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be exported to ONNX, or None: the first layer whose module kind
    has no ONNX form (bitsandbytes layers keep packed weights with kernels of their own)."""
    for name, _, kind in kinds_in(model):
        if kind.export == "none":
            return f"layer {name!r} is a {kind.label}, {kind.reason}"
    return None


@contextmanager
def export_preparation(model: nn.Module) -> Iterator[Callable[[Path], str | None]]:
    """Run the kinds' export preparation for the duration (dynamic int8 layers trace as
    float); yields the step to run on the written file: each kind's post-export hook, once
    for all its layers, which returns what it did (or None when nothing ran)."""
    prepared = [(module, kind) for _, module, kind in kinds_in(model) if kind.prepare_export]
    hooks: dict[PostExport, list[nn.Module]] = {}
    for _, module, kind in kinds_in(model):
        if kind.post_export is not None:
            hooks.setdefault(kind.post_export, []).append(module)

    def post_process(path: Path) -> str | None:
        done = [hook(path, modules) for hook, modules in hooks.items()]
        return "; ".join(done) if done else None

    for module, kind in prepared:
        assert kind.prepare_export is not None
        kind.prepare_export(module, True)
    try:
        yield post_process
    finally:
        for module, kind in prepared:
            assert kind.prepare_export is not None
            kind.prepare_export(module, False)
