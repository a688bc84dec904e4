"""Forward hooks that capture what distillation compares: a module's output, its
attention probabilities, or its input (the classifier's input is the embedding).

Hooks live only inside ``with Taps(...)``: they are removed on exit, so the trained
model carries none into export.

>>> from compresskit.testing import TinyCNN
>>> model, x = TinyCNN(), torch.zeros(2, 1, 8, 8)
>>> with Taps(model, {"h": ("features.3", "output")}) as taps:
...     logits = model(x)
...     taps.values["h"].shape
torch.Size([2, 16, 8, 8])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from compresskit.errors import CompressKitError
from compresskit.tasks import first_tensor

Capture = Literal["output", "attention", "input"]


class Taps:
    """Named captures of module outputs/inputs during one forward (``values``)."""

    def __init__(
        self, model: nn.Module, spec: Mapping[str, tuple[str, Capture]], *, role: str = "model"
    ) -> None:
        self.model = model
        self.spec = dict(spec)
        self.role = role
        self.values: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles: list[RemovableHandle] = []
        self._depth = 0  # nested ``with``: hooks are registered once, removed at the end

    def __enter__(self) -> Taps:
        self._depth += 1
        if self._depth > 1:
            return self
        modules = dict(self.model.named_modules())
        for key, (name, capture) in self.spec.items():
            module = modules.get(name)
            if module is None:
                self.__exit__()
                raise CompressKitError(
                    f"distill: {name!r} is not a module of the {self.role}; "
                    f"its layers are named like {', '.join(_sample_names(modules))}"
                )
            if capture == "input":
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(key)))
            else:
                self._handles.append(module.register_forward_hook(self._hook(key, capture)))
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.values.clear()
        self.calls.clear()

    def check_single_calls(self) -> None:
        """A module that runs twice per forward (a shared ReLU) has no single output."""
        for key, count in self.calls.items():
            if count > 1:
                raise CompressKitError(
                    f"distill: {self.role} module {self.spec[key][0]!r} runs {count} times "
                    "per forward, so it has no single output; map another layer"
                )
        missing = [self.spec[key][0] for key in self.spec if key not in self.values]
        if missing:
            raise CompressKitError(
                f"distill: {self.role} module {missing[0]!r} did not run in the forward "
                "pass; map a layer the model uses"
            )

    def _record(self, key: str, value: torch.Tensor | None, what: str) -> None:
        if value is None:
            raise CompressKitError(
                f"distill: {self.role} module {self.spec[key][0]!r} gives no {what}"
                + (
                    "; load the model with attn_implementation='eager' for attention transfer"
                    if what == "attention probabilities"
                    else ""
                )
            )
        self.values[key] = value
        self.calls[key] = self.calls.get(key, 0) + 1

    def _hook(self, key: str, capture: Capture):  # noqa: ANN202
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if capture == "attention":
                probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                ok = isinstance(probs, torch.Tensor) and probs.dim() == 4
                self._record(key, probs if ok else None, "attention probabilities")
            else:
                self._record(key, first_tensor(output), "tensor output")

        return hook

    def _pre_hook(self, key: str):  # noqa: ANN202
        def hook(module: nn.Module, args: Any) -> None:
            self._record(key, first_tensor(args), "tensor input")

        return hook


def _sample_names(modules: Mapping[str, nn.Module]) -> list[str]:
    names = [n for n in modules if n]
    return names[:3] + (["..."] + names[-2:] if len(names) > 5 else names[3:])
