"""Weight-only quantization with bitsandbytes, for serving in torch (CPU or CUDA).

Linear layers become ``bnb.nn.Linear8bitLt`` (LLM.int8: int8 weights, outlier features
above ``threshold`` in float) or ``bnb.nn.Linear4bit`` (nf4 / fp4 weights in blocks of
64 with float scales); activations and every other layer stay float. The pass records the
memory the weights take before and after. Speed is measured by the run on torch targets,
like any model: on CPU these layers dequantize on the fly and are slower than float.

bitsandbytes 0.49 and later repack 4-bit weights on the first CPU forward for their
AVX512-BF16 kernel, which takes only ``out_features`` divisible by 32 and ``in_features``
divisible by the quantization block (64); other shapes fail inside bitsandbytes
("shape '[32, 0]' is invalid", "N must be divisible by block_n"). Such layers stay 4-bit
on bitsandbytes' generic dequantize-and-matmul path, and the pass records which and why
(``generic_kernel_layers``).

Such a model cannot be exported to ONNX (bitsandbytes' packed formats have no ONNX form):
``export_onnx`` raises ``NotExportableError`` naming the layer, and ``compresskit.run``
records the reason and measures the candidate on torch targets only.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.models.size import state_bytes
from compresskit.passes.base import Effects, Pass, PassConfig, register_pass
from compresskit.passes.records import WeightOnlyRecord
from compresskit.quantization.dynamic import dynamic_layers
from compresskit.quantization.modules import is_quantized
from compresskit.quantization.prepare import excluded, set_submodule


class WeightOnlyConfig(PassConfig):
    """Which format and which Linear layers."""

    dtype: Literal["int8", "nf4", "fp4"] = Field(
        default="int8", description="int8: LLM.int8 (Linear8bitLt); nf4/fp4: Linear4bit"
    )
    threshold: float = Field(
        default=6.0, ge=0, description="int8: outlier threshold (0 turns outlier handling off)"
    )
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32", description="4-bit: dtype of the matmul after dequantization"
    )
    exclude: list[str] = Field(
        default_factory=list, description="module-name patterns (fnmatch) kept in float"
    )


def _replacement(linear: nn.Linear, config: WeightOnlyConfig) -> nn.Module:
    import bitsandbytes as bnb

    bias = linear.bias is not None
    weight = linear.weight.detach().to(torch.float32).clone()
    layer: Any
    if config.dtype == "int8":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=bias,
            has_fp16_weights=False,
            threshold=config.threshold,
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=bias,
            compute_dtype=getattr(torch, config.compute_dtype),
            quant_type=config.dtype,
        )
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=config.dtype)
    if bias:
        assert linear.bias is not None
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer.to(linear.weight.device)  # .to() is what quantizes the weights


# bitsandbytes' CPU 4-bit repacking works on blocks of this many output features.
_CPU_PACK_BLOCK_N = 32


def _avoid_cpu_repacking(layer: Any) -> str | None:
    """Keep a 4-bit layer whose shape bitsandbytes' packed CPU kernel cannot take on the
    generic path; returns why, or None when the kernel takes it (or does not exist)."""
    if not hasattr(layer, "support_avx512bf16_for_cpu"):
        return None  # a bitsandbytes without the packed CPU kernel
    blocksize = getattr(layer.weight, "blocksize", None) or 64
    problems = []
    if layer.out_features % _CPU_PACK_BLOCK_N:
        problems.append(f"out_features {layer.out_features} is not a multiple of 32")
    if layer.in_features % blocksize:
        problems.append(f"in_features {layer.in_features} is not a multiple of {blocksize}")
    if not problems:
        return None
    layer.support_avx512bf16_for_cpu = False
    return "; ".join(problems) + " (bitsandbytes' packed CPU kernel): generic 4-bit path"


@register_pass("weight_only")
class WeightOnly(Pass[WeightOnlyConfig]):
    """bitsandbytes int8 / nf4 / fp4 Linear layers (torch serving only; no ONNX).

    Example::

        WeightOnly(WeightOnlyConfig(dtype="nf4", exclude=["head"])).apply(model, ctx)
    """

    config_cls = WeightOnlyConfig
    effects = Effects(quantizes=frozenset({"layers"}), packs=True)
    record_cls = WeightOnlyRecord

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise CompressKitError(
                "weight_only needs the bitsandbytes package: pip install bitsandbytes"
            ) from None
        if is_quantized(model) or dynamic_layers(model):
            raise CompressKitError(
                "weight_only: the model already has int8 fake-quant layers; weight-only "
                "bitsandbytes layers replace float Linear layers, so use one or the other"
            )
        before_total = state_bytes(model)
        replaced, kept = [], []
        generic: dict[str, str] = {}
        before = after = 0
        for name, module in list(model.named_modules()):
            if type(module) is not nn.Linear:
                continue
            if excluded(name, self.config.exclude):
                kept.append(name)
                continue
            new = _replacement(module, self.config)
            reason = _avoid_cpu_repacking(new) if self.config.dtype != "int8" else None
            if reason:
                generic[name] = reason
            before += state_bytes(module)
            after += state_bytes(new)
            set_submodule(model, name, new)
            replaced.append(name)
        if not replaced:
            raise CompressKitError(
                "weight_only: no nn.Linear layer to replace"
                + (f" (all excluded: {kept})" if kept else "; it quantizes Linear layers only")
            )
        model.eval()
        with torch.no_grad():
            model(*ctx.example_inputs)  # bitsandbytes kernels fail here, not later
        ctx.record(
            dtype=self.config.dtype,
            replaced_layers=len(replaced),
            float_layers=kept,
            generic_kernel_layers=generic,
            linear_weight_bytes=[before, after],
            model_state_bytes=[before_total, state_bytes(model)],
            memory_saved_bytes=before_total - state_bytes(model),
            onnx="not exportable: bitsandbytes layers have no ONNX form; measured in torch",
        )
        return model
