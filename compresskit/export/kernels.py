"""Which kernels ONNX Runtime really runs: ``int8_coverage`` (low-bit coverage), the fraction
of MACs in integer or low-bit kernels (QLinearConv, QGemm, MatMulInteger, MatMulNBits, ...)
rather than float ones. Attention kernels (GroupQueryAttention, ...) count as float work:
their products of activations (q kᵀ, p v) stay float whatever the weights are.

How: ORT optimises the model (CPU provider, all optimisations) and saves the graph it
will run; every node output of that graph is exposed and the graph is run once on a
small batch to get real shapes (contrib ops defeat onnx shape inference); then
MACs per compute node = output elements x reduction size.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INTEGER_CONV = {"QLinearConv", "ConvInteger"}
INTEGER_MATMUL = {
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QGemm",
    "QAttention",
}
# Weight-only low-bit kernels; the node's ``bits`` attribute names the kind (int4, int8).
LOWBIT_MATMUL = {"MatMulNBits"}
FLOAT_ATTENTION = {"GroupQueryAttention", "MultiHeadAttention"}
FLOAT_CONV = {"Conv", "FusedConv", "ConvTranspose"}
FLOAT_MATMUL = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"}
_WEIGHT_INPUT = {"QLinearConv": 3, "ConvInteger": 1, "Conv": 1, "FusedConv": 1, "ConvTranspose": 1}


@dataclass(frozen=True)
class KernelReport:
    """MACs by kernel kind in the graph ORT runs, and the op histogram of that graph."""

    fraction: float
    integer_macs: int  # in integer or low-bit kernels
    total_macs: int
    ops: dict[str, int] = field(default_factory=dict)
    nodes: list[tuple[str, str, str, int]] = field(default_factory=list)  # name, op, kind, MACs

    def macs_by_kind(self) -> dict[str, int]:
        """MACs per kernel kind: ``float``, ``int8`` (integer kernels, 8-bit MatMulNBits),
        ``int4`` (4-bit MatMulNBits)."""
        totals: dict[str, int] = {}
        for _, _, kind, macs in self.nodes:
            totals[kind] = totals.get(kind, 0) + macs
        return totals


def sample_feed(model: Any, *, batch: int = 1, sequence: int = 16) -> dict[str, np.ndarray]:
    """A feed for every graph input: random floats, ones for integer inputs (token ids,
    masks); symbolic dims are ``batch`` first and ``sequence`` after."""
    from onnx import helper

    initializers = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(0)
    feed = {}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        tensor_type = graph_input.type.tensor_type
        dims = [
            d.dim_value if d.dim_value else (batch if index == 0 else sequence)
            for index, d in enumerate(tensor_type.shape.dim)
        ]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feed[graph_input.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feed[graph_input.name] = np.ones(dims, dtype=dtype)
    return feed


def _runtime_shapes(model: Any, feed: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for output in node.output:
            if output and output not in existing:
                probe.graph.output.append(onnx.ValueInfoProto(name=output))
                existing.add(output)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, feed)
    shapes = {n: tuple(v.shape) for n, v in zip(names, values, strict=True) if hasattr(v, "shape")}
    shapes.update({i.name: tuple(i.dims) for i in model.graph.initializer})
    shapes.update({k: tuple(v.shape) for k, v in feed.items()})
    return shapes


def _node_macs(node: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    from onnx import helper

    output = shapes.get(node.output[0])
    if output is None:
        return 0
    if node.op_type in FLOAT_ATTENTION:
        # q kᵀ and p v: 2 x (batch x new tokens x heads x head size) x total tokens
        present = shapes.get(node.output[1]) if len(node.output) > 1 else None
        return 2 * int(np.prod(output)) * int(present[2]) if present else 0
    if node.op_type in INTEGER_CONV | FLOAT_CONV:
        weight = shapes.get(node.input[_WEIGHT_INPUT[node.op_type]])
        return int(np.prod(output)) * int(np.prod(weight[1:])) if weight else 0
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    a = shapes.get(node.input[0])
    if not a:
        return 0
    k = a[-2] if attrs.get("transA", 0) else a[-1]
    return int(np.prod(output)) * int(k)


def _kind(node: Any) -> str | None:
    from onnx import helper

    if node.op_type in INTEGER_CONV | INTEGER_MATMUL:
        return "int8"
    if node.op_type in LOWBIT_MATMUL:
        bits = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "bits"), 4)
        return f"int{bits}"
    if node.op_type in FLOAT_CONV | FLOAT_MATMUL | FLOAT_ATTENTION:
        return "float"
    return None


def kernel_report(
    path: Path, *, threads: int = 1, feed: dict[str, np.ndarray] | None = None
) -> KernelReport:
    """Optimise ``path`` with ORT and measure how much of its work runs in integer or
    low-bit kernels, on ``feed`` (default: :func:`sample_feed`; a decoder with a KV cache
    needs a consistent one, see ``compresskit.export.decoder_parity.decoder_feed``)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized_path)
        # weights beside the graph, so models over 2 GiB can be saved too
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.onnx.data"
        )
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(optimized_path))
    shapes = _runtime_shapes(optimized, feed if feed is not None else sample_feed(optimized))
    nodes = []
    ops: dict[str, int] = {}
    for node in optimized.graph.node:
        name = f"{node.domain}:{node.op_type}" if node.domain else node.op_type
        ops[name] = ops.get(name, 0) + 1
        kind = _kind(node)
        if kind is None:
            continue
        nodes.append((node.name, name, kind, _node_macs(node, shapes)))
    integer = sum(macs for *_, kind, macs in nodes if kind != "float")
    total = sum(macs for *_, macs in nodes)
    return KernelReport(integer / total if total else 0.0, integer, total, ops, nodes)
