"""ONNX graph surgery for low-bit decoder folders: find the LM head and the token lookup,
and build ``MatMulNBits`` / ``GatherBlockQuantized`` nodes from block-quantized codes.

Used by :mod:`compresskit.export.lowbit`; kept apart so that module reads as the
algorithm (what is quantized how) and this one as the ONNX details.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compresskit.errors import CompressKitError
from compresskit.export.blockwise import BlockQuantized, pack_matmul_nbits
from compresskit.export.decoder import replace_dir

GRAPH = "model.onnx"


def load_folder(folder: Path) -> Any:
    """The decoder folder's graph with its weights, or a one-line error naming the fix."""
    import onnx

    path = Path(folder) / GRAPH
    if not path.is_file() or not (Path(folder) / "genai_config.json").is_file():
        raise CompressKitError(
            f"{folder}: not a decoder ONNX folder (model.onnx and genai_config.json); "
            "export it with export_decoder first"
        )
    return onnx.load(str(path))


def write_folder(model: Any, source: Path, out_dir: Path) -> None:
    """Save ``model`` with the source folder's other files, atomically, as ``out_dir``."""
    import onnx

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        for item in Path(source).iterdir():
            if item.is_file() and not item.name.startswith(GRAPH):
                shutil.copy2(item, staging / item.name)
        onnx.save(
            model,
            str(staging / GRAPH),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{GRAPH}.data",
            size_threshold=1024,
        )
        replace_dir(staging, out_dir)


class GraphIndex:
    """Index of an ONNX graph: initializers by name, the node producing each tensor."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.array = lambda name: numpy_helper.to_array(self.inits[name])

    def add(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def drop_unused(self) -> None:
        used = {i for n in self.graph.node for i in n.input} | {o.name for o in self.graph.output}
        keep = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)

    def const_matmuls(self) -> list[Any]:
        return [
            n
            for n in self.graph.node
            if n.op_type == "MatMul"
            and n.input[1] in self.inits
            and len(self.inits[n.input[1]].dims) == 2
        ]


def lm_head(graph: GraphIndex, logits: str) -> Any | None:
    """The MatMul with a constant weight that writes the ``logits`` output, if any."""
    node = graph.producer.get(logits)
    if node is not None and node.op_type == "MatMul" and node.input[1] in graph.inits:
        return node
    return None


def token_lookup(graph: GraphIndex, input_ids: str) -> Any | None:
    """The Gather of the embedding table by ``input_ids``, if any."""
    return next(
        (n for n in graph.graph.node if n.op_type == "Gather" and n.input[1] == input_ids), None
    )


def quantized_inputs(graph: GraphIndex, base: str, q: BlockQuantized) -> list[str]:
    """Initializers for ``q`` in MatMulNBits' layout: codes, scales[, zero points]."""
    codes, scales, zeros = pack_matmul_nbits(q)
    names = [graph.add(f"{base}_Q{q.bits}", codes), graph.add(f"{base}_scales", scales)]
    if zeros is not None:
        names.append(graph.add(f"{base}_zero_points", zeros))
    return names


def nbits_node(node: Any, quantized: list[str], q: BlockQuantized, accuracy_level: int) -> Any:
    from onnx import helper

    return helper.make_node(
        "MatMulNBits",
        [node.input[0], *quantized],
        list(node.output),
        name=f"{node.name}_Q{q.bits}",
        domain="com.microsoft",
        K=q.k,
        N=q.codes.shape[0],
        bits=q.bits,
        block_size=q.block_size,
        accuracy_level=accuracy_level,
    )


def gather_nodes(
    graph: GraphIndex, gather: Any, quantized: list[str], q: BlockQuantized
) -> list[Any]:
    """GatherBlockQuantized over MatMulNBits-layout codes (reshaped to [vocab, bytes]),
    sliced back to the hidden size when the last block is padded."""
    from onnx import helper

    shape = graph.add(f"{gather.name}/shape", np.array([q.codes.shape[0], -1], dtype=np.int64))
    flat = f"{gather.name}/codes"
    nodes = [helper.make_node("Reshape", [quantized[0], shape], [flat], name=f"{flat}/Reshape")]
    padded = q.codes.shape[1] != q.k
    out = f"{gather.output[0]}/padded" if padded else gather.output[0]
    nodes.append(
        helper.make_node(
            "GatherBlockQuantized",
            [flat, gather.input[1], *quantized[1:]],
            [out],
            name=f"{gather.name}BlockQuantized",
            domain="com.microsoft",
            bits=q.bits,
            block_size=q.block_size,
            gather_axis=0,
            quantize_axis=1,
        )
    )
    if padded:
        bounds = [
            graph.add(f"{gather.name}/{key}", np.array([value], np.int64))
            for key, value in (("start", 0), ("end", q.k), ("axis", -1))
        ]
        nodes.append(helper.make_node("Slice", [out, *bounds], [gather.output[0]]))
    return nodes
