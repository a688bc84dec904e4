"""Export targets (top-level ``export/*.yaml``): runtime, provider, precision, threads."""

from __future__ import annotations

from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compresskit.errors import CompressKitError


class Target(BaseModel):
    """Where a model is measured.

    >>> load_target("cpu-ort").provider                           # doctest: +SKIP
    'CPUExecutionProvider'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    runtime: Literal["onnxruntime", "torch"]
    provider: str = Field(
        default="CPUExecutionProvider", description="ORT provider or torch device"
    )
    precision: Literal["as-exported", "fp32", "fp16"] = "as-exported"
    threads: int = Field(default=0, ge=0, description="intra-op threads; 0: all cores")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1)
    sequence_length: int | None = Field(default=None, ge=1)


def builtin_target_names() -> list[str]:
    root = resources.files("compresskit") / "builtin" / "targets"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def load_target(name: str) -> Target:
    """A built-in target by name."""
    if name not in builtin_target_names():
        raise CompressKitError(
            f"unknown target {name!r}; known targets: {', '.join(builtin_target_names())} "
            "(see `compresskit targets list`)"
        )
    text = (resources.files("compresskit") / "builtin" / "targets" / f"{name}.yaml").read_text()
    try:
        return Target.model_validate(yaml.safe_load(text))
    except ValidationError as error:
        raise CompressKitError(f"target export/{name}.yaml: {error.errors()[0]['msg']}") from None


def target_available(target: Target) -> str | None:
    """None when the target can run here, else the reason it cannot."""
    if target.runtime == "onnxruntime":
        import onnxruntime as ort

        if target.provider not in ort.get_available_providers():
            return f"{target.provider} is not available in this onnxruntime build"
        return None
    import torch

    if target.provider.startswith("cuda") and not torch.cuda.is_available():
        return "no CUDA device"
    return None
