"""Running torch-pruning's MetaPruner: tied weights kept tied, failures named.

A Linear layer whose weight is also another module's (an output head tied to the input
embedding) must keep its input width, the embedding's: torch-pruning pins the output
channels of ignored layers but would still cut such a layer's input as a dependent of
the layer feeding it. The layers whose output channels reach a tied layer's input are
found in torch-pruning's dependency graph and ignored too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.pruning.tracing import describe, unknown_parameter_owners


def tied_linears(model: nn.Module) -> list[nn.Linear]:
    """Linear layers that share a parameter with another module."""
    owners: dict[int, nn.Module] = {}
    tied: list[nn.Linear] = []
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            other = owners.setdefault(id(parameter), module)
            if other is not module:
                tied += [m for m in (module, other) if isinstance(m, nn.Linear) and m not in tied]
    return tied


def _feeding(pruner: Any, layer: nn.Linear) -> list[nn.Module]:  # noqa: ANN401
    """Modules whose output channels are cut with ``layer``'s input channels."""
    import torch_pruning as tp

    group = pruner.DG.get_pruning_group(
        layer, tp.prune_linear_in_channels, idxs=list(range(layer.in_features))
    )
    return [
        dep.target.module
        for dep, _ in group
        if getattr(dep.handler, "__name__", "") == "prune_out_channels"
        and isinstance(dep.target.module, nn.Module)
    ]


def _hint(model: nn.Module) -> str:
    suspects = unknown_parameter_owners(model)
    if suspects:
        return f"likely {suspects[0]}, whose parameters it has no rule for; add it to `ignore`"
    return "add the module whose op fails to `ignore`"


def check_traceable(model: nn.Module, example_inputs: tuple) -> None:
    """Raise a one-line error now if torch-pruning cannot build ``model``'s dependency
    graph (what pruning would otherwise find out only when it runs)."""
    import torch_pruning as tp

    with torch.enable_grad():
        try:
            tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        except Exception as error:
            raise CompressKitError(
                f"prune_channels: torch-pruning cannot trace the model ({describe(error)}); "
                f"{_hint(model)}"
            ) from None


def run_torch_pruning(model: nn.Module, example_inputs: tuple, **options: Any) -> Any:  # noqa: ANN401
    """A stepped ``MetaPruner`` over ``model`` (pruned in place); one-line errors."""
    import torch_pruning as tp

    # torch-pruning traces the graph through autograd, so gradients must be on.
    with torch.enable_grad():
        try:
            pruner = tp.pruner.MetaPruner(model, example_inputs=example_inputs, **options)
            ignored = list(options.get("ignored_layers", []))
            pinned = [m for t in tied_linears(model) for m in _feeding(pruner, t)]
            extra = [m for m in pinned if all(m is not i for i in ignored)]
            if extra:
                options = {**options, "ignored_layers": ignored + extra}
                pruner = tp.pruner.MetaPruner(model, example_inputs=example_inputs, **options)
            pruner.step()
        except CompressKitError:
            raise
        except Exception as error:
            raise CompressKitError(
                f"prune_channels: torch-pruning could not trace or prune the model "
                f"({describe(error)}); {_hint(model)}"
            ) from None
    return pruner
