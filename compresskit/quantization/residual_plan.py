"""Deciding which residual adds and concatenations take int8 inputs, and rewriting them
(see :mod:`compresskit.quantization.residuals` for the mechanism).

An op qualifies when every tensor it adds or concatenates comes, through grid-preserving
ops only, from a quant layer's output quantizer or from an op that already qualified, or
is a float tensor that a quant layer quantizes at its input anyway (a float stem's output:
the add takes it on that layer's grid); its result must feed something besides the
model's output. Decisions are made on one trace of the whole model, in graph order, so a
chain of residual blocks qualifies block by block.

Example::

    result = rewrite_residuals(prepared_model)
    result.integer
    # -> ['layer1: add', 'layer2: add', 'layer3: add']
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch.fx as fx
from torch import nn

from compresskit import interrupts
from compresskit.quantization.modules import QUANT_TYPES, ActQuant
from compresskit.quantization.residuals import (
    ADD_FUNCTIONS,
    CAT_FUNCTIONS,
    CONTAINER,
    RELU_FUNCTIONS,
    TRANSPARENT_FUNCTIONS,
    TRANSPARENT_METHODS,
    TRANSPARENT_MODULES,
    GlobalTracer,
    IntegerResiduals,
    PlanEntry,
    ResidualResult,
    install,
    tensor_inputs,
    trace_own,
)


@dataclass
class _Decision:
    owner: str
    node: fx.Node
    after: fx.Node
    relu: bool
    out: ActQuant
    inputs: dict[int, ActQuant] = field(default_factory=dict)


class _Model:
    """The whole model's trace and what it needs to answer about it."""

    def __init__(self, model: nn.Module) -> None:
        self.graph = GlobalTracer().trace(model)
        self.modules = dict(model.named_modules())
        self.calls = Counter(n.target for n in self.graph.nodes if n.op == "call_module")

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(str(node.target)) if node.op == "call_module" else None

    def transparent(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.module(node), TRANSPARENT_MODULES)
        if node.op == "call_function":
            return node.target in TRANSPARENT_FUNCTIONS
        return node.op == "call_method" and node.target in TRANSPARENT_METHODS

    def is_residual(self, node: fx.Node) -> bool:
        if node.op != "call_function" or node.kwargs:
            return False
        if node.target in CAT_FUNCTIONS or (node.target in ADD_FUNCTIONS and len(node.args) == 2):
            inputs = tensor_inputs(node)
            return len(inputs) >= 2 and all(isinstance(x, fx.Node) for x in inputs)
        return False

    def is_relu(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.module(node), nn.ReLU)
        if node.op == "call_function":
            return node.target in RELU_FUNCTIONS and len(node.args) == 1
        return node.op == "call_method" and node.target == "relu"

    def owner(self, node: fx.Node) -> str | None:
        """The module whose own forward holds ``node`` ('' the model's), or None when that
        module runs more than once (its forward cannot be rewritten for one call)."""
        stack = list((node.meta.get("nn_module_stack") or {}).items())
        if node.op == "call_module":
            stack = stack[:-1]
        if any("@" in key for key, _ in stack):
            return None
        return str(stack[-1][1][0]) if stack else ""


def _source(
    model: _Model, value: object, quantized: dict[fx.Node, ActQuant]
) -> tuple[ActQuant, int] | None:
    """The quantizer a tensor comes from through grid-preserving ops, and how many real
    ops lie between (identity and dropout do not count)."""
    hops = 0
    while isinstance(value, fx.Node):
        if value in quantized:
            return quantized[value], hops
        layer = model.module(value)
        if isinstance(layer, QUANT_TYPES) and model.calls[value.target] == 1:
            return (layer.act_out, hops) if layer.act_out.enabled else None
        if not model.transparent(value) or not value.args:
            return None
        if not isinstance(layer, nn.Identity | nn.Dropout):
            hops += 1
        value = value.args[0]
    return None


def _quantized_by_reader(model: _Model, value: object) -> ActQuant | None:
    """The input quantizer of a quant layer that reads the same float tensor (through
    identities only), e.g. a float stem's output that the next block's first conv
    quantizes: an add taking that tensor on the same grid runs as QLinearAdd, where it
    would otherwise run in float between Dequantize/Quantize pairs."""
    while isinstance(value, fx.Node):
        for user in value.users:
            layer = model.module(user)
            if (
                isinstance(layer, QUANT_TYPES)
                and model.calls[user.target] == 1
                and user.args
                and user.args[0] is value
                and layer.act_in.enabled
                and layer.act_in.tied_to is None
            ):
                return layer.act_in
        if not isinstance(model.module(value), nn.Identity | nn.Dropout) or not value.args:
            return None
        value = value.args[0]
    return None


def _label(owner: str | None, node: fx.Node) -> str:
    return f"{owner or '(model)'}: {node.name}"


def _decide(
    model: _Model, floating: dict[str, str], refused: dict[str, str]
) -> tuple[list[_Decision], dict[fx.Node, ActQuant]]:
    """The ops to rewrite, in graph order (``refused``: owners whose forward cannot be
    rewritten, and why); why each other op stays float goes into ``floating``."""
    quantized: dict[fx.Node, ActQuant] = {}
    decisions: list[_Decision] = []
    for node in model.graph.nodes:
        if not model.is_residual(node):
            continue
        owner = model.owner(node)
        label = _label(owner, node)
        sources = []
        for value in tensor_inputs(node):
            found = _source(model, value, quantized)
            if found is None and (reader := _quantized_by_reader(model, value)) is not None:
                found = (reader, 1)  # a quantizer of its own, on the reader's grid
            sources.append(found)
        why = None
        if owner is None:
            why = "its module runs more than once"
        elif owner in refused:
            why = f"its module's forward cannot be rewritten ({refused[owner]})"
        elif not sources or any(s is None for s in sources):
            why = "an input does not come from an int8 layer"
        users = list(node.users)
        after, relu = node, False
        if len(users) == 1 and model.is_relu(users[0]) and model.owner(users[0]) == owner:
            after, relu = users[0], True
        if why is None and all(user.op == "output" for user in after.users):
            why = "its result is the model's output"
        if why is not None:
            floating[label] = why
            continue
        decision = _Decision(str(owner), node, after, relu, ActQuant(force_zero_point_zero=relu))
        for position, found in enumerate(sources):
            assert found is not None
            source, hops = found
            if hops:  # e.g. DQ -> ReLU -> Add: ORT needs a DQ right before the add
                decision.inputs[position] = ActQuant()
                decision.inputs[position].tied_to = source
        quantized[after] = decision.out
        decisions.append(decision)
    return decisions, quantized


def _link_consumers(model: _Model, quantized: dict[fx.Node, ActQuant]) -> None:
    """A quant layer that reads a rewritten op's result reads it through its quantizer."""
    for node in model.graph.nodes:
        layer = model.module(node)
        if not isinstance(layer, QUANT_TYPES) or model.calls[node.target] != 1 or not node.args:
            continue
        found = _source(model, node.args[0], quantized)
        if found is None or found[0] not in quantized.values():
            continue
        layer.act_in.tied_to = found[0]
        if found[1] == 0:
            layer.act_in.enabled = False


def _plan_for(owner: nn.Module, decisions: list[_Decision], model: _Model) -> list[PlanEntry]:
    """The decisions in the names of ``owner``'s own trace (its adds and concatenations
    come in the same order as in the whole model's)."""
    own = [n for n in trace_own(owner).nodes if model.is_residual(n)]
    mine = [
        n
        for n in model.graph.nodes
        if model.is_residual(n) and model.owner(n) == _name(model, owner)
    ]
    if len(own) != len(mine):
        raise LookupError("its own trace differs from the model's")
    index = {node: own[i] for i, node in enumerate(mine)}
    plan = []
    for decision in decisions:
        local = index[decision.node]
        after = local
        if decision.relu:
            users = list(local.users)
            if len(users) != 1 or not _is_own_relu(owner, users[0]):
                raise LookupError(f"{local.name} is not followed by the same ReLU")
            after = users[0]
        plan.append(
            {
                "node": local.name,
                "after": after.name,
                "out": f"int8_{after.name}",
                "relu": decision.relu,
                "inputs": {str(p): f"int8_{local.name}_in{p}" for p in decision.inputs},
            }
        )
    return plan


def _is_own_relu(owner: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(owner.get_submodule(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    return node.op == "call_method" and node.target == "relu"


def _name(model: _Model, module: nn.Module) -> str:
    return next(name for name, m in model.modules.items() if m is module)


def rewrite_residuals(model: nn.Module) -> ResidualResult:
    """Put ``model``'s qualifying residual adds and concatenations on int8 grids, in
    place (call after the quant layers are in, before calibration)."""
    result = ResidualResult()
    try:
        traced = _Model(model)
    except Exception as error:  # dynamic control flow and the like: keep today's graph
        interrupts.check(error)
        result.notes.append(
            f"torch.fx could not trace the model ({type(error).__name__}); residual adds "
            "and concatenations stay float"
        )
        return result
    refused: dict[str, str] = {}
    while True:  # an owner refused changes what later ops read: decide again without it
        floating: dict[str, str] = {}
        decisions, quantized = _decide(traced, floating, refused)
        by_owner: dict[str, list[_Decision]] = {}
        for decision in decisions:
            by_owner.setdefault(decision.owner, []).append(decision)
        plans = {}
        for owner_name, mine in by_owner.items():
            owner = model.get_submodule(owner_name) if owner_name else model
            try:
                if hasattr(owner, CONTAINER):
                    raise LookupError(f"it already has an attribute {CONTAINER!r}")
                plans[owner_name] = (owner, _plan_for(owner, mine, traced), mine)
            except Exception as error:
                interrupts.check(error)
                refused[owner_name] = str(error) or type(error).__name__
        if not set(by_owner) & set(refused):
            break
    for owner, plan, mine in plans.values():
        container = IntegerResiduals(plan)
        for entry, decision in zip(plan, mine, strict=True):
            container.add_module(entry["out"], decision.out)
            for position, quantizer in decision.inputs.items():
                container.add_module(entry["inputs"][str(position)], quantizer)
        install(owner, container)
    _link_consumers(traced, quantized)
    result.integer = [_label(d.owner, d.node) for d in decisions]
    result.floating = floating
    return result
