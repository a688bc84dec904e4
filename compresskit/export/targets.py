"""Export targets (top-level ``export/*.yaml``): runtime, provider, precision, threads.

A target names where a model is measured. Targets that cannot run on this machine are
reported as skipped with the reason (:func:`target_available`), never dropped.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compresskit.errors import CompressKitError
from compresskit.yaml_text import load_yaml, read_yaml_file

Runtime = Literal["onnxruntime", "torch"]
ORT_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
TORCH_DEVICES = ("cpu", "cuda")


class Target(BaseModel):
    """Where a model is measured.

    >>> load_target("cpu-ort").provider
    'CPUExecutionProvider'
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str
    description: str = ""
    runtime: Runtime
    provider: str = Field(
        default="CPUExecutionProvider",
        description="ONNX Runtime execution provider, or torch device (cpu, cuda)",
    )
    precision: Literal["as-exported", "fp32", "fp16"] = Field(
        default="as-exported",
        description="as-exported runs the ONNX graph as written (int8 stays int8); fp16 "
        "builds TensorRT fp16 engines, or runs torch under fp16 autocast",
    )
    threads: int = Field(default=0, ge=0, description="intra-op threads; 0: all cores")
    allow_spinning: bool | None = Field(
        default=None,
        description="ORT intra-op threads spin while idle; None: only when one model is "
        "measured (spinning threads of one session would steal cores from the next)",
    )
    denormal_as_zero: bool = Field(
        default=True,
        description="flush denormal floats to zero while timing (ORT's session."
        "set_denormal_as_zero, torch.set_flush_denormal): a masked softmax leaves "
        "probabilities of 1e-45 that x86 multiplies many times slower; false times the "
        "runtime's default",
    )
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1)
    sequence_length: int | None = Field(
        default=None, ge=1, description="length of inputs with a dynamic sequence axis"
    )

    @model_validator(mode="after")
    def _provider_fits_runtime(self) -> Target:
        known = ORT_PROVIDERS if self.runtime == "onnxruntime" else TORCH_DEVICES
        if self.provider not in known:
            raise ValueError(
                f"provider {self.provider!r} is not one of {', '.join(known)} for runtime "
                f"{self.runtime}"
            )
        if min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes {self.batch_sizes}: give positive integers")
        return self


def _targets_dir():  # -> importlib.resources.abc.Traversable
    return resources.files("compresskit") / "builtin" / "targets"


def builtin_target_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in _targets_dir().iterdir() if p.name.endswith(".yaml")
    )


def load_target(name: str | Path) -> Target:
    """A built-in target by name, or a target YAML file."""
    where = f"target {name}"
    if str(name).endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            kind = "a directory" if path.is_dir() else "no such file"
            raise CompressKitError(f"target file {path}: {kind}; give a target .yaml file")
        text = read_yaml_file(path, what="target file")
    elif str(name) in builtin_target_names():
        text = (_targets_dir() / f"{name}.yaml").read_text()
        where = f"target export/{name}.yaml"
    else:
        raise CompressKitError(
            f"unknown target {name!r}; known targets: {', '.join(builtin_target_names())} "
            "(see `compresskit targets list`), or give a target .yaml file"
        )
    raw = load_yaml(text, where=where)
    try:
        return Target.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise CompressKitError(f"{where}: {field}: {first['msg']}") from None


def target_available(target: Target) -> str | None:
    """None when the target can run here, else the reason it cannot.

    This is the cheap check; the benchmark worker also confirms that a session really
    runs on the provider (ORT silently falls back to the CPU otherwise)."""
    if target.runtime == "onnxruntime":
        import onnxruntime as ort

        available = ort.get_available_providers()
        if target.provider not in available:
            return (
                f"{target.provider} is not in this onnxruntime build "
                f"(onnxruntime {ort.__version__} has {', '.join(available)}); install "
                "onnxruntime-gpu on a machine with a CUDA device"
            )
        if target.precision == "fp16" and target.provider != "TensorrtExecutionProvider":
            return f"precision fp16 on {target.provider} needs an fp16 graph; export one"
        return None
    if target.precision == "fp16" and target.provider == "cpu":
        return "precision fp16 on the torch CPU target is not supported; use fp32"
    if target.provider == "cuda":
        if not _nvidia_driver():
            return "no CUDA device: no NVIDIA GPU driver on this machine (no /dev/nvidiactl)"
        import torch  # only now: importing torch takes seconds

        if not torch.cuda.is_available():
            return f"no CUDA device visible to torch {torch.__version__}"
    return None


def _nvidia_driver() -> bool:
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None
