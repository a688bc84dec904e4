"""Where the time goes: ONNX Runtime's profiler, each node mapped back to a torch module.

ORT profiles the graph it optimised (fused QLinearConv, NCHWc convolutions, layout
transposes it inserted), so a profiled node is first matched to the exported graph's
nodes, and those to the module they came from:

- exported node -> module: a parameter it reads (``layer1.conv1.weight`` ->
  ``layer1.conv1``), else its scope: the dynamo exporter's ``pkg.torch.onnx.name_scopes``
  metadata, or the TorchScript exporter's name (``/layer2/shortcut/shortcut.0/Conv``);
- optimised node -> exported node: the same name, the name without the suffixes ORT adds
  (``_token_4``, ``_nchwc``, ``/duplicated``), or the tensor it writes; a fused kernel
  (a convolution with its ReLU or residual Add) counts to the convolution in it;
- a node ORT added (a layout ``Transpose``, a ``ReorderOutput``) counts to the module of
  its neighbour.

Quantizers count to what owns them (a layer's ``act_in`` to the layer, a block's residual
quantizers to the block). This module never imports torch: the benchmark worker runs it.

Example::

    profile = summarize(calls, node_modules(exported, optimised), target="cpu-ort", batch=32)
"""

from __future__ import annotations

import ast
import bisect
import json
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from compresskit.bench.measurement import LayerCost, Profile

# Submodules that quantize the tensors of what owns them (compresskit.quantization):
# a quant layer's ActQuant children and a block's residual quantizers.
QUANTIZER_SCOPES = frozenset({"act_in", "act_out", "int8_residuals"})
# ... and the residual quantizers themselves, whose export scopes may skip their container.
RESIDUAL_QUANTIZER_PREFIX = "int8_"
# Kernels that do a layer's arithmetic; a fused node that holds one counts to it.
COMPUTE_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "ConvInteger",
        "FusedConv",
        "QLinearConv",
        "NhwcFusedConv",
        "Gemm",
        "FusedGemm",
        "QGemm",
        "MatMul",
        "FusedMatMul",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
        "Attention",
        "QAttention",
    }
)
UNMAPPED = "(unmapped)"
_ORT_SUFFIX = re.compile(r"(_token_\d+|_nchwc|/duplicated|_kernel_time)$")
_CALL_INDEX = re.compile(r"^(.+)_(\d+)$")
_PARAMETER = re.compile(r"^(.+)\.(weight|bias)(_quantized)?$")
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def owner_of(path: str) -> str:
    """The layer or block a quantizer's module path counts to (the path itself otherwise)."""
    parts = path.split(".") if path else []
    for index, part in enumerate(parts):
        if part in QUANTIZER_SCOPES or part.startswith(RESIDUAL_QUANTIZER_PREFIX):
            return ".".join(parts[:index])
    return path


def _known_modules(graph: Any) -> set[str]:
    """Module paths named by the graph's parameters (``a.b.weight`` -> ``a``, ``a.b``)."""
    known = {""}
    for initializer in graph.initializer:
        match = _PARAMETER.match(initializer.name)
        if match:
            parts = match.group(1).split(".")
            known.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return known


def _parameter_owner(node: Any, parameters: set[str]) -> str | None:
    """The module of a parameter only ``node`` reads (an exporter may share one tensor
    among modules whose values are equal, e.g. untrained biases of zeros)."""
    for name in node.input:
        match = _PARAMETER.match(name) if name in parameters else None
        if match:
            return match.group(1)
    return None


def _single_use(graph: Any) -> set[str]:
    """Initializers exactly one node reads."""
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    return {i.name for i in graph.initializer if readers.get(i.name) == 1}


def _scoped_path(components: Sequence[str], known: set[str]) -> str:
    """The module path of a TorchScript scope (``['layer2', 'shortcut', 'shortcut.0']``):
    a container's child is named ``parent.index``, a module called again ``name_N``."""
    parts: list[str] = []
    for component in components:
        if parts and component.startswith(parts[-1] + "."):
            parts[-1] = component
            continue
        match = _CALL_INDEX.match(component)
        if match and ".".join([*parts, component]) not in known:
            component = match.group(1)  # the N-th call of a module without parameters
        parts.append(component)
    return ".".join(parts)


def exported_modules(model: Any) -> dict[str, str]:
    """Node name -> module path for the nodes of an exported graph that say where they
    come from (a parameter, dynamo's name scopes, a TorchScript scope)."""
    graph = model.graph
    parameters = _single_use(graph)
    known = _known_modules(graph)
    modules: dict[str, str] = {}
    for node in graph.node:
        path = _parameter_owner(node, parameters)
        if path is None:
            scopes = next((p.value for p in node.metadata_props if p.key == _NAME_SCOPES), None)
            if scopes is not None:
                try:
                    names = ast.literal_eval(scopes)
                except (ValueError, SyntaxError):
                    names = []
                if len(names) >= 2 and not str(names[-2]).startswith("_"):
                    path = str(names[-2])  # not "_empty_nn_module_stack_from_metadata_hook"
            elif node.name.startswith("/"):
                path = _scoped_path(node.name.split("/")[1:-1], known)
        if path is not None:
            modules[node.name] = owner_of(path)
    return modules


def _stripped(name: str) -> Iterable[str]:
    """``name`` and what remains as ORT's suffixes come off it, one by one."""
    yield name
    while True:
        shorter = _ORT_SUFFIX.sub("", name)
        if shorter == name or not shorter:
            return
        name = shorter
        yield name


def node_modules(exported: Any, optimized: Any | None) -> dict[str, tuple[str, str]]:
    """Optimised node name -> (module path, op type) for every node ORT runs
    (``UNMAPPED`` where nothing says where it comes from). ``optimized`` None: the
    profiled names are the exported graph's own."""
    modules = exported_modules(exported)
    by_name = {node.name: node for node in exported.graph.node}
    producer = {out: node for node in exported.graph.node for out in node.output if out}
    runs = optimized if optimized is not None else exported
    found: dict[str, str | None] = {}
    for node in runs.graph.node:
        origin = _origin(node, by_name, producer)
        if origin is not None and origin.op_type not in COMPUTE_OPS and _is_compute(node):
            origin = _fused_compute(origin, producer) or origin
        found[node.name] = modules.get(origin.name) if origin is not None else None
    _from_neighbours(runs.graph, found)
    return {
        node.name: (_or_unmapped(found.get(node.name)), node.op_type) for node in runs.graph.node
    }


def _or_unmapped(module: str | None) -> str:
    return UNMAPPED if module is None else module


def _is_compute(node: Any) -> bool:
    return node.op_type in COMPUTE_OPS


def _origin(node: Any, by_name: Mapping[str, Any], producer: Mapping[str, Any]) -> Any | None:
    """The exported node an optimised one stands for: by name, then by the tensor it writes."""
    for name in _stripped(node.name):
        if name in by_name:
            return by_name[name]
        if name in producer:
            return producer[name]
    for output in node.output:
        for name in _stripped(output):
            if name in producer:
                return producer[name]
    return None


def _fused_compute(origin: Any, producer: Mapping[str, Any], depth: int = 4) -> Any | None:
    """The convolution or matmul a fused node grew from, when it is named after the
    ReLU / Add / BatchNorm fused into it: the nearest one upstream of ``origin``."""
    frontier = [origin]
    for _ in range(depth):
        upstream = [producer[i] for n in frontier for i in n.input if i in producer]
        for candidate in upstream:
            if candidate.op_type in COMPUTE_OPS:
                return candidate
        frontier = upstream
    return None


def _from_neighbours(graph: Any, found: dict[str, str | None]) -> None:
    """Nodes ORT added count to the module of the node that reads their output, else of
    the one that wrote their input (repeated: chains of added nodes)."""
    producer = {out: node for node in graph.node for out in node.output if out}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for _ in range(len(graph.node)):
        changed = False
        for node in graph.node:
            if found.get(node.name) is not None:
                continue
            near = [c for out in node.output for c in consumers.get(out, [])]
            near += [producer[i] for i in node.input if i in producer]
            module = next((found[n.name] for n in near if found.get(n.name) is not None), None)
            if module is not None:
                found[node.name] = module
                changed = True
        if not changed:
            return


def read_trace(path: Path, *, skip: int = 1) -> list[dict[str, float]]:
    """Per call (after the first ``skip``), the kernel time in ms of each node, from an
    ORT profile (Chrome trace JSON)."""
    events = json.loads(Path(path).read_text())
    calls = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    starts = [start for start, _ in calls]
    per_call: list[dict[str, float]] = [{} for _ in calls]
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        index = bisect.bisect_right(starts, event["ts"]) - 1
        if index < 0 or event["ts"] > calls[index][1]:
            continue
        name = event["name"][: -len("_kernel_time")]
        per_call[index][name] = per_call[index].get(name, 0.0) + event["dur"] / 1000
    return per_call[skip:]


def summarize(
    calls: Sequence[Mapping[str, float]],
    nodes: Mapping[str, tuple[str, str]],
    *,
    target: str,
    batch: int,
    workload: str | None = None,
) -> Profile:
    """A :class:`Profile` from per-call node times: each node's median, summed per module."""
    names = sorted({name for call in calls for name in call})
    median = {name: statistics.median(call.get(name, 0.0) for call in calls) for name in names}
    total = sum(median.values())
    grouped: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    by_op: dict[str, float] = {}
    for name, ms in median.items():
        module, op = nodes.get(name, (UNMAPPED, "?"))
        ops = grouped.setdefault(module, {})
        ops[op] = ops.get(op, 0.0) + ms
        counts[module] = counts.get(module, 0) + 1
        by_op[op] = by_op.get(op, 0.0) + ms
    layers = [
        LayerCost(
            module=module,
            ops=sorted(ops, key=lambda op: -ops[op]),
            ms=sum(ops.values()),
            share=sum(ops.values()) / total if total else 0.0,
            nodes=counts[module],
        )
        for module, ops in grouped.items()
        if module != UNMAPPED
    ]
    layers.sort(key=lambda layer: -layer.ms)
    unmapped = sum(grouped.get(UNMAPPED, {}).values())
    return Profile(
        target=target,
        batch=batch,
        workload=workload,
        runs=len(calls),
        kernel_ms=total,
        layers=layers,
        unmapped_ms=unmapped,
        by_op=dict(sorted(by_op.items(), key=lambda item: -item[1])),
    )
