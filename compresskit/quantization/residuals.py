"""Integer residuals: residual adds and concatenations between int8 layers on int8 grids.

ONNX Runtime runs ``DQ(a), DQ(b) -> Add -> Q`` as one QLinearAdd (and a Concat between
DequantizeLinear and QuantizeLinear as QLinearConcat); without the output quantizer the
add runs in float between DequantizeLinear, QuantizeLinear and layout Transposes. So an
add or concatenation whose every input comes from a quantized tensor gets a quantizer on
its output (after the ReLU that follows it, with zero point 0, so ORT drops the ReLU),
and an input that reaches it through a grid-preserving op (ReLU, max-pool, reshape) gets
one tied to its producer's (exact: the same grid). The layers that read the result
read it through that quantizer (their own is disabled and tied to it).

How: the whole model is traced with torch.fx once to decide (which producer feeds what);
then each module whose own ``forward`` holds such an add is traced alone, its children
left as calls, and that forward is replaced, on the instance only, by the traced code with
the quantizers inserted (:class:`RewrittenForward`). Class, module names and export scopes
stay; the quantizers live in the module's ``int8_residuals`` child
(:class:`IntegerResiduals`), a module kind that a saved model re-attaches on reload. A
model that does not trace keeps its adds in float, and :class:`ResidualResult` says why.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from compresskit.errors import CompressKitError
from compresskit.kinds import module_kind
from compresskit.quantization.modules import QUANT_TYPES, ActQuant

CONTAINER = "int8_residuals"
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
CAT_FUNCTIONS = {torch.cat, torch.concat}
RELU_FUNCTIONS = {torch.relu, F.relu}
# Ops that keep a quantized tensor on its (scale, zero point) grid.
TRANSPARENT_MODULES = (nn.MaxPool2d, nn.Identity, nn.Dropout, nn.Flatten, nn.ReLU)
TRANSPARENT_FUNCTIONS = {torch.flatten, F.max_pool2d, F.relu, torch.relu, F.dropout}
TRANSPARENT_METHODS = {"view", "reshape", "flatten", "contiguous", "relu"}

# One rewritten op, by the names of the owner's own trace: "node" (the add or cat),
# "after" (it, or the ReLU after it), "out" (the output quantizer's name), "relu" (zero
# point 0), "inputs" ({argument position: input quantizer name}).
PlanEntry = dict[str, Any]


class ResidualRewriteError(CompressKitError):
    """A module's forward no longer traces to the graph its plan was made on (a saved
    model reloaded with other code)."""


@dataclass
class ResidualResult:
    """What :func:`rewrite_residuals` did, for the pass record."""

    integer: list[str] = field(default_factory=list)  # "owner: add", ...
    floating: dict[str, str] = field(default_factory=dict)  # op -> why it stays float
    notes: list[str] = field(default_factory=list)


def _structure(module: nn.Module) -> dict[str, Any]:
    return {"plan": copy.deepcopy(module.plan)}  # type: ignore[arg-type]


def _attach(model: nn.Module, name: str, attrs: Mapping[str, Any]) -> None:
    owner_name = name.rpartition(".")[0]
    owner = model.get_submodule(owner_name) if owner_name else model
    container = IntegerResiduals(list(attrs.get("plan", [])))
    for quantizer in container.children():
        assert isinstance(quantizer, ActQuant)
        quantizer.mode = "quant"
    install(owner, container)


@module_kind(
    precision="int8",
    export="qdq",
    structure=_structure,
    restore_refusal="is added by quantization, not swapped in (it re-attaches on reload)",
    attach=_attach,
)
class IntegerResiduals(nn.Module):
    """The quantizers of one module's residual adds and concatenations, named after the
    ops of its traced forward, and the plan that says where they go.

    Example::

        block.int8_residuals.relu_1_out
        # -> ActQuant(enabled=True, mode=quant, scale=0.04, zero_point=0, tied=False)
    """

    def __init__(self, plan: list[PlanEntry]) -> None:
        super().__init__()
        self.plan = plan
        for entry in plan:
            self.add_module(entry["out"], ActQuant(force_zero_point_zero=bool(entry["relu"])))
            for key in entry["inputs"].values():
                self.add_module(key, ActQuant())


class _OwnTracer(fx.Tracer):
    """Traces one module's own forward: every submodule it calls stays one call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


class GlobalTracer(fx.Tracer):
    """Traces the whole model down to its layers; quant layers are leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (*QUANT_TYPES, ActQuant, IntegerResiduals)) or super().is_leaf_module(
            m, module_qualified_name
        )


def trace_own(owner: nn.Module) -> fx.Graph:
    # The class's forward, never an instance's rewritten one (fx reads type(root).forward).
    return _OwnTracer().trace(owner)


def _compile(owner: nn.Module, plan: list[PlanEntry]) -> Any:
    graph = trace_own(owner)
    nodes = {node.name: node for node in graph.nodes}
    for entry in plan:
        if entry["node"] not in nodes or entry["after"] not in nodes:
            raise ResidualRewriteError(
                f"{type(owner).__name__}.forward no longer has the op {entry['node']!r} its "
                "int8 residual quantizers were made for; reload with the code it was saved from"
            )
        node = nodes[entry["node"]]
        for position, key in entry["inputs"].items():
            _quantize_input(graph, node, int(position), f"{CONTAINER}.{key}")
        after = nodes[entry["after"]]
        with graph.inserting_after(after):
            quantized = graph.call_module(f"{CONTAINER}.{entry['out']}", (after,))
        after.replace_all_uses_with(
            quantized, delete_user_cb=lambda user, new=quantized: user is not new
        )
    graph.lint()
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<{type(owner).__name__} int8 residuals>", "exec"), namespace)
    return namespace["forward"]


def tensor_inputs(node: fx.Node) -> list[fx.Node | Any]:
    if node.target in CAT_FUNCTIONS:
        return list(node.args[0]) if isinstance(node.args[0], list | tuple) else []
    return list(node.args[:2])


def _quantize_input(graph: fx.Graph, node: fx.Node, position: int, target: str) -> None:
    inputs = tensor_inputs(node)
    with graph.inserting_before(node):
        quantized = graph.call_module(target, (inputs[position],))
    if node.target in CAT_FUNCTIONS:
        inputs[position] = quantized
        node.update_arg(0, inputs)
    else:
        node.update_arg(position, quantized)


class RewrittenForward:
    """An instance's forward: its class's forward with the residual quantizers inserted.
    Picklable (it keeps the plan, and compiles again on first use after unpickling); a
    deep copy shares the compiled code and calls it on the copy."""

    def __init__(self, owner: nn.Module, plan: list[PlanEntry]) -> None:
        self.owner = owner
        self.plan = plan
        self._code: Any = _compile(owner, plan)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._code is None:
            self._code = _compile(self.owner, self.plan)
        return self._code(self.owner, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {"owner": self.owner, "plan": self.plan}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.owner, self.plan, self._code = state["owner"], state["plan"], None

    def __deepcopy__(self, memo: dict[int, Any]) -> RewrittenForward:
        copied = object.__new__(RewrittenForward)
        memo[id(self)] = copied
        copied.owner = copy.deepcopy(self.owner, memo)
        copied.plan = copy.deepcopy(self.plan, memo)
        copied._code = self._code
        return copied


def install(owner: nn.Module, container: IntegerResiduals) -> None:
    """Give ``owner`` its quantizers and the forward that calls them."""
    owner.add_module(CONTAINER, container)
    owner.__dict__["forward"] = RewrittenForward(owner, container.plan)


def is_rewritten(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("forward"), RewrittenForward)
