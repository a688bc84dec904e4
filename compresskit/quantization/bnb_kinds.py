"""Module kinds of bitsandbytes' quantized layers (what the weight_only pass makes).

Registered by qualified name, so that export, size counting and checkpoints can ask about
a bitsandbytes layer without importing bitsandbytes (the registry imports this module
when it meets a ``bitsandbytes.`` name). None of them exports to ONNX, and none is
restored from a saved file: bitsandbytes' packed 4-bit weights need their quantization
state rebuilt by bitsandbytes itself, which a plain state dict load does not do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from compresskit.kinds import ModuleKind, WeightPrecision, register_kind
from compresskit.models.size import state_bytes

_NO_ONNX = (
    "which has no ONNX form; measure this model on a torch target (e.g. torch-cpu), or use "
    "the quantize / quantize_dynamic pass for an int8 ONNX model"
)
_NO_RESTORE = (
    "compresskit cannot rebuild from a saved file (bitsandbytes' packed weights); save the "
    "float model and apply the weight_only pass after loading it"
)


def _four_bit(module: nn.Module) -> WeightPrecision:
    weight: Any = module.weight
    return "fp4" if getattr(weight, "quant_type", "nf4") == "fp4" else "nf4"


def _register(
    class_name: str, precision: WeightPrecision | Callable[[nn.Module], WeightPrecision]
) -> None:
    register_kind(
        ModuleKind(
            name=f"bitsandbytes.nn.modules.{class_name}",
            precision=precision,
            export="none",
            label=f"bitsandbytes {class_name}",
            reason=_NO_ONNX,
            weight_bytes=state_bytes,  # packed values, scales and quantization state
            restore_refusal=_NO_RESTORE,
        )
    )


for _name in ("Linear8bitLt", "Embedding8bit"):
    _register(_name, "int8")
for _name in ("Linear4bit", "Embedding4bit"):  # nf4 or fp4, as the layer was made
    _register(_name, _four_bit)
for _name in ("LinearNF4", "EmbeddingNF4"):
    _register(_name, "nf4")
for _name in ("LinearFP4", "EmbeddingFP4"):
    _register(_name, "fp4")
