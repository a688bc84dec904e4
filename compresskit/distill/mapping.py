"""Which student layer learns from which teacher layer.

``auto`` finds each model's layers: the longest ``nn.ModuleList`` of same-class blocks
(transformer layers), else the stages of a CNN (the parameterised children below the
root, excluding the classifier). Equal depths pair by position (by name when the
architectures match, as after width pruning); a shallower student pairs uniformly by
depth (student layer i of m learns from teacher layer round((i + 1) n / m) - 1, so
the last layers always meet). ``last`` keeps only the final pair; a list of pairs in the
policy is used as given, after checking every name exists.

>>> from compresskit.testing import TinyTransformer
>>> student, teacher = TinyTransformer(depth=2), TinyTransformer(depth=4)
>>> map_layers(student, teacher, "auto")
[('blocks.0', 'blocks.1'), ('blocks.1', 'blocks.3')]
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from compresskit.distill.losses import Layers
from compresskit.errors import CompressKitError

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def classifier_name(model: nn.Module) -> str:
    """The last ``nn.Linear``: its input is the embedding RKD compares."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise CompressKitError(
            "distill: the model has no nn.Linear classifier; name the embedding layer "
            "for RKD explicitly (layer: {student: ..., teacher: ...})"
        )
    return names[-1]


def layer_stack(model: nn.Module) -> list[str]:
    """Names of the blocks in the longest ModuleList of same-class modules, or []."""
    best: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            classes = {type(child) for child in module}
            if len(classes) == 1:
                best = [f"{name}.{index}" for index in range(len(module))]
    return best


def stage_names(model: nn.Module) -> list[str]:
    """The stages of a model without a layer stack: descend from the root while there is
    a single parameterised child; a run of plain layers keeps its normalisations."""
    head = classifier_name(model)
    prefix, module = "", model
    while True:
        children = [
            (f"{prefix}{name}", child)
            for name, child in module.named_children()
            if any(True for _ in child.parameters())
            and not (head == f"{prefix}{name}" or head.startswith(f"{prefix}{name}."))
        ]
        if len(children) == 1 and any(True for _ in children[0][1].children()):
            prefix, module = f"{children[0][0]}.", children[0][1]
            continue
        break
    leaves = all(not any(True for _ in child.children()) for _, child in children)
    if leaves and any(isinstance(child, NORMS) for _, child in children):
        children = [(name, child) for name, child in children if isinstance(child, NORMS)]
    return [name for name, _ in children]


def hidden_layers(model: nn.Module) -> list[str]:
    return layer_stack(model) or stage_names(model)


def attention_layers(model: nn.Module) -> list[str]:
    """Modules that compute self-attention probabilities (``*SelfAttention`` classes,
    as in Hugging Face BERT-style models), in order."""
    return [
        name
        for name, module in model.named_modules()
        if type(module).__name__.endswith("SelfAttention")
    ]


def pair_by_depth(student: Sequence[str], teacher: Sequence[str]) -> list[tuple[str, str]]:
    m, n = len(student), len(teacher)
    if m == 0 or n == 0:
        raise CompressKitError(
            "distill: found no layers to map automatically; list the layer pairs in the "
            "policy (layers: [{student: ..., teacher: ...}])"
        )
    if m > n:
        raise CompressKitError(
            f"distill: the student has {m} layers and the teacher {n}; automatic mapping "
            "needs a student no deeper than its teacher: list the layer pairs in the policy"
        )
    return [(s, teacher[round((i + 1) * n / m) - 1]) for i, s in enumerate(student)]


def map_layers(
    student: nn.Module, teacher: nn.Module, layers: Layers, *, kind: str = "hidden"
) -> list[tuple[str, str]]:
    """(student module, teacher module) pairs for ``kind`` (``hidden`` or ``attention``)."""
    if isinstance(layers, list):
        pairs = [(pair.student, pair.teacher) for pair in layers]
        if not pairs:
            raise CompressKitError("distill: layers is an empty list; give pairs or 'auto'")
        check_names(student, [s for s, _ in pairs], "student")
        check_names(teacher, [t for _, t in pairs], "teacher")
        return pairs
    find = attention_layers if kind == "attention" else hidden_layers
    pairs = pair_by_depth(find(student), find(teacher))
    return pairs[-1:] if layers == "last" else pairs


def check_names(model: nn.Module, names: Sequence[str], role: str) -> None:
    known = dict(model.named_modules())
    for name in names:
        if name not in known:
            close = [n for n in known if n and (n.endswith(name) or name in n)][:3]
            hint = (
                f"; did you mean {', '.join(close)}?"
                if close
                else (f"; its layers are named like {', '.join([n for n in known if n][:4])}")
            )
            raise CompressKitError(f"distill: layer {name!r} is not a module of the {role}{hint}")
