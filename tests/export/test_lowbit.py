"""Low-bit decoder folders: int4 MatMulNBits (RTN, GPTQ), the int8 tied head shared with
GatherBlockQuantized, ORT dynamic int8, and low-bit coverage of the graph ORT runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError

from compresskit.errors import CompressKitError
from compresskit.export.blockwise import quantize_rtn
from compresskit.export.decoder import onnx_folder_bytes
from compresskit.export.decoder_parity import DecoderSession, greedy_genai, torch_logits
from compresskit.export.lowbit import (
    DynamicInt8Config,
    Int4Config,
    lowbit_coverage,
    quantize_decoder_dynamic_int8,
    quantize_decoder_int4,
)


def _ops(folder: Path) -> Counter:
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return Counter(n.op_type for n in graph.node)


def _windows(count: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 300, (count, length))


def _fake_quantized(model_dir: Path, *, head_bits: int, block_size: int) -> torch.nn.Module:
    """The torch model with every Linear weight (and so the tied embedding) replaced by
    its RTN codes dequantized: what the int4 graph should compute."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                bits = head_bits if name == "lm_head" else 4
                q = quantize_rtn(module.weight.numpy(), bits=bits, block_size=block_size)
                module.weight.copy_(torch.from_numpy(q.dequantize()))
    return model


def test_int4_rtn_folder_computes_the_fake_quantized_model(tiny_lm_dir, tiny_lm_onnx, tmp_path):
    config = Int4Config(algorithm="rtn", accuracy_level=0, head="int8")  # float compute
    result = quantize_decoder_int4(tiny_lm_onnx, tmp_path / "int4", config=config)
    ops = _ops(result.path)
    assert ops["MatMulNBits"] == 11 and ops["MatMul"] == 0  # 2 x (qkv, o, gate, up, down) + head
    assert ops["GatherBlockQuantized"] == 1 and ops["Transpose"] == 0
    assert result.tied_embedding and result.head == "int8" and result.quantized_matmuls == 10
    assert result.onnx_bytes < onnx_folder_bytes(tiny_lm_onnx) / 3
    windows = _windows(3, 16, seed=0)
    reference = torch_logits(_fake_quantized(tiny_lm_dir, head_bits=8, block_size=32), windows)
    actual = DecoderSession(result.path).logits(windows, prefill=6)
    assert np.abs(actual - reference).max() <= 1e-3 * np.abs(reference).max()
    assert (tmp_path / "int4" / "tokenizer.json").is_file()
    assert len(greedy_genai(result.path, [5, 6, 7], 6)) == 6


def test_int4_gptq_runs_in_genai_and_is_measured_as_low_bit(tiny_lm_onnx, tmp_path) -> None:
    calibration = _windows(4, 32, seed=1)
    result = quantize_decoder_int4(tiny_lm_onnx, tmp_path / "gptq", calibration=calibration)
    assert result.scheme == "int4-gptq-b32" and result.calibration_tokens == 128
    assert _ops(result.path)["MatMulNBits"] == 11
    tokens = greedy_genai(result.path, [5, 6, 7], 8)
    assert len(tokens) == 8 and all(0 <= t < 300 for t in tokens)
    report = lowbit_coverage(result.path)
    kinds = report.macs_by_kind()
    # decode step after 128 cached tokens: 2 layers x 36864 int4 MACs, the head's 19200
    # int8, attention 2 x 2 x 64 x 129 float (exact, from the tiny config)
    assert kinds == {"int4": 73728, "int8": 19200, "float": 33024}
    assert report.fraction == pytest.approx(92928 / 125952)


def test_float_folder_has_no_low_bit_work(tiny_lm_onnx) -> None:
    report = lowbit_coverage(tiny_lm_onnx)
    assert report.fraction == 0.0 and report.total_macs == 125952


def test_dynamic_int8_uses_integer_kernels(tiny_lm_onnx, tmp_path) -> None:
    result = quantize_decoder_dynamic_int8(tiny_lm_onnx, tmp_path / "int8")
    assert result.quantized_matmuls == 11 and result.head == "int8"
    report = lowbit_coverage(result.path)
    assert report.macs_by_kind()["int8"] == 92928  # every MatMul, attention stays float
    windows = _windows(2, 12, seed=2)
    reference = DecoderSession(tiny_lm_onnx).logits(windows)
    actual = DecoderSession(result.path).logits(windows, prefill=4)
    assert np.abs(actual - reference).max() < 0.2 * np.abs(reference).max()
    kept = quantize_decoder_dynamic_int8(
        tiny_lm_onnx, tmp_path / "int8-head-float", config=DynamicInt8Config(head=False)
    )
    assert kept.float_matmuls == ["/lm_head/MatMul"] and _ops(kept.path)["MatMul"] == 1


def test_bad_low_bit_input_is_a_one_line_error(tiny_lm_onnx, tmp_path) -> None:
    with pytest.raises(CompressKitError, match="gptq needs calibration windows"):
        quantize_decoder_int4(tiny_lm_onnx, tmp_path / "x")
    with pytest.raises(CompressKitError, match="not a decoder ONNX folder"):
        quantize_decoder_int4(tmp_path, tmp_path / "y", config=Int4Config(algorithm="rtn"))
    with pytest.raises(CompressKitError, match="no MatMul"):
        quantize_decoder_int4(
            tiny_lm_onnx, tmp_path / "z", config=Int4Config(algorithm="rtn", exclude=["*"])
        )
    with pytest.raises(ValidationError):
        Int4Config(block_size=48)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
