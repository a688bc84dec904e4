"""Export a Hugging Face causal LM to an ONNX folder with a KV cache that onnxruntime-genai runs.

Route: onnxruntime-genai's model builder (``python -m onnxruntime_genai.models.builder``),
run in a subprocess. It writes ``model.onnx`` (+ ``model.onnx.data``) with past key/values
in and out (one graph for prefill and decode), ``genai_config.json`` and the tokenizer
files. Why this route and not torch.onnx with a cache wrapper: transformers 5 cache
classes do not trace cleanly; the builder emits ORT's fused CPU kernels
(GroupQueryAttention with rotary, SkipSimplifiedLayerNormalization), the graph
onnxruntime-genai is written for, and it reads widths from ``config.json``, so a pruned
model with uniform widths per layer (fewer layers, KV heads, heads or MLP neurons) exports
like any other. A subprocess keeps the builder's ``sys.path`` additions and its memory out
of ours.

Limits: the architectures in :data:`BUILDER_ARCHITECTURES` (GPT-2 is not one); every
layer must have the same widths, and ``config.json`` must describe them.

Example::

    export_decoder(Path("smollm2-hf"), Path("smollm2-onnx"))
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compresskit.errors import CompressKitError, MissingDependencyError

# Hugging Face architecture -> onnxruntime-genai model type. Llama and Qwen2 are tested
# here (tiny configs); Mistral and Qwen3 take the same builder paths.
BUILDER_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
ROUTE = "onnxruntime-genai model builder"


class DecoderExportError(CompressKitError):
    """The model builder could not export this model directory."""


class DecoderExportConfig(BaseModel):
    """How the builder writes the graph: precision and, for int4/int8, its weight-only RTN.

    ``precision: int4`` is the builder's own round-to-nearest MatMulNBits (the peer row);
    compresskit's calibrated int4 starts from the fp32 export (``compresskit.export.lowbit``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    precision: Literal["fp32", "int4", "int8"] = Field(
        default="fp32", description="fp32: float graph; int4/int8: builder RTN MatMulNBits"
    )
    block_size: Literal[16, 32, 64, 128, 256] = Field(
        default=32, description="int4/int8: weights per scale along the input axis"
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=4, description="int4/int8: MatMulNBits compute type (4: int8 activations)"
    )
    symmetric: bool = Field(default=True, description="int4/int8: no zero points")
    timeout_s: float = Field(default=3600, gt=0, description="builder subprocess time limit")


class DecoderExport(BaseModel):
    """Where the ONNX folder is and what wrote it."""

    model_config = ConfigDict(frozen=True)

    path: Path
    architecture: str
    precision: str
    onnx_bytes: int
    seconds: float
    route: str = ROUTE


def onnx_folder_bytes(folder: Path) -> int:
    """Bytes of the graph and its weights (``*.onnx`` and ``*.onnx.data``), not the tokenizer."""
    return sum(
        p.stat().st_size for p in folder.iterdir() if p.name.endswith((".onnx", ".onnx.data"))
    )


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of a Hugging Face directory, or a one-line error naming the fix."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise CompressKitError(
            f"{model_dir}: not a Hugging Face model directory (no config.json); "
            "save the model with save_pretrained(dir)"
        )
    config: dict[str, Any] = json.loads(config_path.read_text())
    return config


def check_exportable(model_dir: Path) -> str:
    """The architecture of ``model_dir`` if the builder can export it; else CompressKitError."""
    config = read_hf_config(model_dir)
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in BUILDER_ARCHITECTURES:
        raise CompressKitError(
            f"{model_dir}: architecture {architecture} has no KV-cache ONNX export here; "
            f"supported: {', '.join(BUILDER_ARCHITECTURES)} (GPT-2 is not supported)"
        )
    if not (model_dir / "tokenizer.json").is_file():
        raise CompressKitError(
            f"{model_dir}: no tokenizer.json (onnxruntime-genai needs it); save the tokenizer "
            "beside the model with tokenizer.save_pretrained(dir)"
        )
    _check_uniform_widths(model_dir, config)
    return architecture


def _check_uniform_widths(model_dir: Path, config: dict[str, Any]) -> None:
    """The builder reads widths from config.json: every layer's weights must match them."""
    from safetensors import safe_open

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    expected = {
        "self_attn.q_proj.weight": heads * head_dim,
        "self_attn.k_proj.weight": config.get("num_key_value_heads", heads) * head_dim,
        "mlp.gate_proj.weight": config["intermediate_size"],
    }
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="np") as handle:
            for key in handle.keys():
                suffix = ".".join(key.split(".")[-3:])
                if suffix in expected and ".layers." in key:
                    rows = handle.get_slice(key).get_shape()[0]
                    if rows != expected[suffix]:
                        raise CompressKitError(
                            f"{model_dir}: {key} has {rows} rows but config.json implies "
                            f"{expected[suffix]}; the KV-cache export needs uniform widths per "
                            "layer described by config.json (head_dim, num_key_value_heads, "
                            "intermediate_size); prune with the uniform-width option"
                        )


def builder_command(
    model_dir: Path, out_dir: Path, cache_dir: Path, config: DecoderExportConfig
) -> list[str]:
    """The model builder's command line for ``config`` (CPU execution provider)."""
    options = ["hf_token=false"]  # never ask the hub: everything is local
    if config.precision != "fp32":
        options += [
            f"block_size={config.block_size}",
            f"accuracy_level={config.accuracy_level}",
            f"is_symmetric={str(config.symmetric).lower()}",
        ]
    return [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(model_dir),
        "-o",
        str(out_dir),
        "-p",
        config.precision,
        "-e",
        "cpu",
        "-c",
        str(cache_dir),
        "--extra_options",
        *options,
    ]


def export_decoder(
    model_dir: Path, out_dir: Path, *, config: DecoderExportConfig | None = None
) -> DecoderExport:
    """Write the ONNX folder for the Hugging Face causal LM in ``model_dir`` to ``out_dir``.

    ``out_dir`` appears complete or not at all (built beside it, then renamed); an existing
    ``out_dir`` is replaced. The input directory is only read.
    """
    import importlib.util

    config = config or DecoderExportConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    architecture = check_exportable(model_dir)
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise MissingDependencyError("onnxruntime-genai", "llm", "the KV-cache decoder export")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        staging = Path(tmp) / "out"
        command = builder_command(model_dir, staging, Path(tmp) / "cache", config)
        env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=config.timeout_s
            )
        except subprocess.TimeoutExpired:
            raise DecoderExportError(
                f"{model_dir}: the model builder ran over {config.timeout_s:.0f} s; raise timeout_s"
            ) from None
        if done.returncode != 0 or not (staging / "genai_config.json").is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise DecoderExportError(
                f"{model_dir}: the model builder failed ({lines[-1] if lines else 'no output'})"
            )
        replace_dir(staging, out_dir)
    return DecoderExport(
        path=out_dir,
        architecture=architecture,
        precision=config.precision,
        onnx_bytes=onnx_folder_bytes(out_dir),
        seconds=time.perf_counter() - start,
    )


def replace_dir(staging: Path, out_dir: Path) -> None:
    """Move the finished ``staging`` folder to ``out_dir``, replacing an old one."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
