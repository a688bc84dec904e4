"""Which modules a pruning pass may touch: name patterns, defaults, output widths."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import nn

from compresskit.errors import CompressKitError

# Ignored unless the user says otherwise: the classifier (its outputs are the classes) and
# embeddings (their width is the residual stream of every block).
DEFAULT_IGNORE = ("*embed*",)


def prunable_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv and linear layer, by module name."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
    return widths


def classifier_name(model: nn.Module) -> str | None:
    """Name of the last linear layer: its outputs are the classes and keep their count."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def match(model: nn.Module, pattern: str, *, what: str) -> dict[str, nn.Module]:
    """Modules whose name matches ``pattern`` (fnmatch); an error names ``what`` and shows
    real names when nothing matches."""
    named = {n: m for n, m in model.named_modules() if n}
    found = {n: m for n, m in named.items() if fnmatch.fnmatchcase(n, pattern)}
    if not found:
        examples = ", ".join(list(named)[:4])
        raise CompressKitError(
            f"{what} pattern {pattern!r} matches no module; module names look like {examples}"
        )
    return found


def ignored_modules(
    model: nn.Module, patterns: Iterable[str], *, defaults: bool, what: str
) -> dict[str, nn.Module]:
    """Modules never pruned: the user's patterns (each must match), plus, with
    ``defaults``, the classifier, ``nn.Embedding`` layers and modules named like embeddings."""
    ignored: dict[str, nn.Module] = {}
    head = classifier_name(model)
    if head is not None:
        ignored[head] = model.get_submodule(head)
    if defaults:
        for name, module in model.named_modules():
            if isinstance(module, nn.Embedding) or any(
                fnmatch.fnmatchcase(name, p) for p in DEFAULT_IGNORE
            ):
                ignored[name] = module
    for pattern in patterns:
        ignored.update(match(model, pattern, what=what))
    return ignored
