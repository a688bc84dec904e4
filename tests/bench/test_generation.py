"""The generation benchmark on a tiny causal LM: torch generate and onnxruntime-genai rows,
timed interleaved. Numbers are checked for shape and sense, never for speed."""

from __future__ import annotations

import numpy as np
import pytest

from compresskit.bench.generation import (
    GenerationCandidate,
    GenerationConfig,
    bench_generation,
)
from compresskit.errors import CompressKitError

QUICK = GenerationConfig(
    prompt_lengths=[8, 24],
    new_tokens=6,
    decode_prompt=8,
    batch_sizes=[1, 2],
    min_repeats=2,
    max_seconds=0.2,
    threads=1,
)


@pytest.fixture
def tiny_lm(tiny_lm_dir, tiny_lm_onnx):
    return tiny_lm_dir, tiny_lm_onnx


def test_every_row_gets_every_measurement(tiny_lm) -> None:
    model_dir, folder = tiny_lm
    rows = [
        GenerationCandidate(name="fp32 torch", runtime="torch", path=model_dir),
        GenerationCandidate(name="fp32 ORT", runtime="onnxruntime-genai", path=folder),
    ]
    prompts = np.random.default_rng(0).integers(1, 300, (3, 30))
    result = bench_generation(rows, prompts, config=QUICK)
    assert [r.name for r in result.rows] == ["fp32 torch", "fp32 ORT"] and result.threads == 1
    for row in result.rows:
        assert set(row.ttft_ms) == {8, 24} and all(v > 0 for v in row.ttft_ms.values())
        assert set(row.decode_tok_s) == {1, 2} and all(v > 0 for v in row.decode_tok_s.values())
        assert all(n >= QUICK.min_repeats for n in row.samples.values()) and len(row.samples) == 4
        assert row.file_bytes > 0 and row.load_s > 0
        assert row.noisy == bool(row.noise_reasons)
    ort = result.row("fp32 ORT")
    assert ort.file_bytes == sum(p.stat().st_size for p in folder.glob("*.onnx*"))
    speedup = result.decode_speedup("fp32 ORT", "fp32 torch")
    assert speedup == pytest.approx(ort.decode_tok_s[1] / result.row("fp32 torch").decode_tok_s[1])
    assert GenerationConfig.model_validate_json(result.config.model_dump_json()) == QUICK


def test_prompts_shorter_than_asked_are_rejected(tiny_lm) -> None:
    _, folder = tiny_lm
    row = GenerationCandidate(name="x", runtime="onnxruntime-genai", path=folder)
    with pytest.raises(CompressKitError, match=r"need \[n, >= 24\] token ids"):
        bench_generation([row], np.ones((2, 10), np.int64), config=QUICK)
    missing = GenerationCandidate(name="gone", runtime="torch", path=folder / "nope")
    with pytest.raises(CompressKitError, match="gone.*is not a folder"):
        bench_generation([missing], np.ones((2, 30), np.int64), config=QUICK)
