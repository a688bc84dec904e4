"""Low-bit weights for a decoder ONNX folder, in kernels ONNX Runtime runs on a CPU.

:func:`quantize_decoder_int4` rewrites the fp32 folder of :func:`export_decoder`:
every MatMul with a constant weight becomes ``MatMulNBits`` (4-bit codes in blocks along
the input axis, round-to-nearest or GPTQ), and the LM head becomes ``MatMulNBits`` with
8 bits (or 4, or stays float). When the embedding is tied to the head, the token lookup
becomes ``GatherBlockQuantized`` on the *same* codes, so the vocabulary matrix is stored
once. GPTQ's Hessians (sum of x xᵀ of every MatMul input) come from ONNX Runtime running
the float graph on calibration windows, so the rewrite needs no Hugging Face names.

:func:`quantize_decoder_dynamic_int8` is ONNX Runtime's dynamic int8 (per-channel weights,
activations quantized at run time; ``DynamicQuantizeMatMul`` once ORT optimizes).

Both write a new folder (atomically) with ``genai_config.json`` and the tokenizer beside
the graph; onnxruntime-genai runs it as it runs the float one.
"""

from __future__ import annotations

import fnmatch
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from compresskit.errors import CompressKitError
from compresskit.export.blockwise import quantize_gptq, quantize_rtn
from compresskit.export.decoder import onnx_folder_bytes
from compresskit.export.decoder_parity import DecoderSession, decoder_feed
from compresskit.export.kernels import KernelReport, kernel_report
from compresskit.export.lowbit_graph import (
    GRAPH,
    GraphIndex,
    gather_nodes,
    lm_head,
    load_folder,
    nbits_node,
    quantized_inputs,
    token_lookup,
    write_folder,
)


class Int4Config(BaseModel):
    """Block-wise int4 weights (``MatMulNBits``) and the LM head / tied embedding's format.

    >>> Int4Config(algorithm="gptq", block_size=32, head="int8").head
    'int8'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["rtn", "gptq"] = Field(
        default="gptq", description="rtn: round to nearest; gptq: calibrated (needs windows)"
    )
    block_size: Literal[16, 32, 64, 128] = Field(
        default=32, description="weights per scale along the input axis"
    )
    symmetric: bool = Field(default=True, description="no zero points (the builder's default)")
    zero_points: Literal["int", "float"] = Field(
        default="int",
        description="asymmetric body weights: float zero points keep each block's minimum "
        "exactly (GGUF Q4_1's grid); ORT may then run MatMulNBits in float",
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=4, description="MatMulNBits compute: 4 = int8 activations (fastest on CPU)"
    )
    head: Literal["int8", "int4", "float"] = Field(
        default="int8", description="LM head and tied embedding: 8-bit blocks, 4-bit, or float"
    )
    damp: float = Field(default=0.01, gt=0, lt=1, description="gptq: Hessian dampening")
    exclude: list[str] = Field(
        default_factory=list, description="MatMul node-name patterns (fnmatch) kept float"
    )

    def needs_calibration(self) -> bool:
        return self.algorithm == "gptq"

    @model_validator(mode="after")
    def _float_zero_points_need_asymmetry(self) -> Int4Config:
        if self.symmetric and self.zero_points == "float":
            raise ValueError("zero_points: float needs symmetric: false (symmetric has none)")
        return self


class DynamicInt8Config(BaseModel):
    """ONNX Runtime dynamic int8 on the MatMuls (weights per channel)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_channel: bool = True
    head: bool = Field(default=True, description="quantize the LM head MatMul too")


class LowBitResult(BaseModel):
    """What the rewrite did: which MatMuls, the head's format, the folder's size."""

    model_config = ConfigDict(frozen=True)

    path: Path
    scheme: str
    quantized_matmuls: int
    float_matmuls: list[str]
    head: str
    tied_embedding: bool
    calibration_tokens: int
    onnx_bytes: int
    seconds: float


def collect_hessians(
    folder: Path, model: Any, names: Sequence[str], windows: np.ndarray
) -> dict[str, np.ndarray]:
    """Mean x xᵀ of each tensor in ``names`` over every token of ``windows`` [n, length],
    from ONNX Runtime running ``model`` (the float graph of ``folder``)."""
    import onnx

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    sums: dict[str, np.ndarray] = {}
    tokens = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / GRAPH
        onnx.save(augmented, str(path), save_as_external_data=True, location=f"{GRAPH}.data")
        del augmented
        session = DecoderSession(folder, graph=path)
        for window in np.asarray(windows):
            values = session.session.run(list(names), session.feed(window[None], None))
            for name, value in zip(names, values, strict=True):
                x = value.reshape(-1, value.shape[-1]).astype(np.float64)
                sums[name] = sums.get(name, 0) + x.T @ x
            tokens += window.size
    return {name: total / tokens for name, total in sums.items()}


def quantize_decoder_int4(
    folder: Path,
    out_dir: Path,
    *,
    config: Int4Config | None = None,
    calibration: np.ndarray | None = None,
) -> LowBitResult:
    """Write ``out_dir``: ``folder``'s decoder with int4 MatMulNBits weights (see module doc).

    ``calibration``: token windows [n, length] for GPTQ (a few thousand tokens suffice).
    """
    import json

    from onnx import helper

    config = config or Int4Config()
    folder, out_dir = Path(folder), Path(out_dir)
    if config.needs_calibration() and (calibration is None or len(calibration) == 0):
        raise CompressKitError(
            "int4 algorithm gptq needs calibration windows; pass some, or use algorithm: rtn"
        )
    start = time.perf_counter()
    model = load_folder(folder)
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    graph = GraphIndex(model)
    head = lm_head(graph, decoder["outputs"]["logits"])
    gather = token_lookup(graph, decoder["inputs"]["input_ids"])
    body = [n for n in graph.const_matmuls() if n is not head]
    kept = [n.name for n in body if any(fnmatch.fnmatch(n.name, p) for p in config.exclude)]
    body = [n for n in body if n.name not in kept]
    if not body:
        raise CompressKitError(f"{folder}: no MatMul with a constant weight left to quantize")
    hessians = {}
    if config.algorithm == "gptq":
        assert calibration is not None
        inputs = sorted({n.input[0] for n in body})
        hessians = collect_hessians(folder, model, inputs, calibration)
    new: dict[str, list[Any]] = {}
    for node in body:
        weight = graph.array(node.input[1]).T
        size, symmetric = config.block_size, config.symmetric
        float_zero = config.zero_points == "float"
        q = (
            quantize_gptq(
                weight,
                hessians[node.input[0]],
                bits=4,
                block_size=size,
                symmetric=symmetric,
                float_zero=float_zero,
                damp=config.damp,
            )
            if config.algorithm == "gptq"
            else quantize_rtn(
                weight, bits=4, block_size=size, symmetric=symmetric, float_zero=float_zero
            )
        )
        quantized = quantized_inputs(graph, node.input[1], q)
        new[node.output[0]] = [nbits_node(node, quantized, q, config.accuracy_level)]
    tied = False
    if head is not None and config.head != "float":
        bits = 8 if config.head == "int8" else 4
        q = quantize_rtn(
            graph.array(head.input[1]).T,
            bits=bits,
            block_size=config.block_size,
            symmetric=config.symmetric,
        )
        quantized = quantized_inputs(graph, head.input[1], q)
        new[head.output[0]] = [nbits_node(head, quantized, q, config.accuracy_level)]
        source = graph.producer.get(gather.input[0]) if gather is not None else None
        if (
            gather is not None
            and source is not None
            and source.op_type == "Transpose"
            and (source.input[0] == head.input[1])
        ):
            tied = True
            new[source.output[0]] = []
            new[gather.output[0]] = gather_nodes(graph, gather, quantized, q)
        elif gather is not None and gather.input[0] in graph.inits:
            table = quantize_rtn(
                graph.array(gather.input[0]),
                bits=bits,
                block_size=config.block_size,
                symmetric=config.symmetric,
            )
            table_inputs = quantized_inputs(graph, gather.input[0], table)
            new[gather.output[0]] = gather_nodes(graph, gather, table_inputs, table)
    nodes = [replacement for n in graph.graph.node for replacement in new.get(n.output[0], [n])]
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    graph.drop_unused()
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    write_folder(model, folder, out_dir)
    head_format = config.head if head is not None else "none"
    return LowBitResult(
        path=out_dir,
        scheme=f"int4-{config.algorithm}-b{config.block_size}"
        + ("" if config.symmetric else f"-asym-{config.zero_points}-zero"),
        quantized_matmuls=len(body),
        float_matmuls=kept + ([head.name] if head is not None and config.head == "float" else []),
        head=head_format,
        tied_embedding=tied,
        calibration_tokens=int(np.asarray(calibration).size) if hessians else 0,
        onnx_bytes=onnx_folder_bytes(out_dir),
        seconds=time.perf_counter() - start,
    )


def quantize_decoder_dynamic_int8(
    folder: Path, out_dir: Path, *, config: DynamicInt8Config | None = None
) -> LowBitResult:
    """Write ``out_dir``: ``folder``'s decoder with ONNX Runtime dynamic int8 MatMuls."""
    import json

    from onnxruntime.quantization import QuantType, quantize_dynamic

    config = config or DynamicInt8Config()
    folder, out_dir = Path(folder), Path(out_dir)
    start = time.perf_counter()
    model = load_folder(folder)
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    graph = GraphIndex(model)
    head = lm_head(graph, decoder["outputs"]["logits"])
    matmuls = graph.const_matmuls()
    excluded = [head.name] if head is not None and not config.head else []
    del model, graph
    with tempfile.TemporaryDirectory() as tmp:
        quantize_dynamic(
            str(folder / GRAPH),
            str(Path(tmp) / GRAPH),
            weight_type=QuantType.QInt8,
            per_channel=config.per_channel,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=excluded,
            use_external_data_format=True,
            extra_options={"MatMulConstBOnly": True},
        )
        write_folder(_load_graph(Path(tmp) / GRAPH), folder, out_dir)
    return LowBitResult(
        path=out_dir,
        scheme="int8-dynamic" + ("-per-channel" if config.per_channel else ""),
        quantized_matmuls=len(matmuls) - len(excluded),
        float_matmuls=excluded,
        head="int8" if head is not None and config.head else "float",
        tied_embedding=False,
        calibration_tokens=0,
        onnx_bytes=onnx_folder_bytes(out_dir),
        seconds=time.perf_counter() - start,
    )


def lowbit_coverage(
    folder: Path, *, past: int = 128, sequence: int = 1, threads: int = 1
) -> KernelReport:
    """Share of MACs in integer or low-bit kernels of the graph ORT optimises from the
    decoder folder, for one call with ``sequence`` new tokens after ``past`` cached ones
    (default: a decode step, where generation spends its time). Attention is float work."""
    feed = decoder_feed(folder, past=past, sequence=sequence)
    return kernel_report(Path(folder) / GRAPH, threads=threads, feed=feed)


def _load_graph(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))
