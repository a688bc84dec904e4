"""KV-cache export of causal LMs (onnxruntime-genai model builder): parity with torch
through prefill and decode, identical greedy tokens, pruned shapes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compresskit.errors import CompressKitError
from compresskit.export.decoder import check_exportable, export_decoder
from compresskit.export.decoder_parity import (
    DecoderSession,
    decoder_parity,
    greedy_match,
    torch_logits,
)
from compresskit.testing.tiny_lm_export import save_tiny_lm

# Pruned the way the decoder pruning saves it: fewer layers, KV heads and MLP neurons,
# head_dim no longer hidden / heads (2 x 16 != 64).
PRUNED = dict(
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    intermediate_size=96,
)
CASES = {"llama": ("llama", {}), "qwen2": ("qwen2", {}), "llama-pruned": ("llama", PRUNED)}


def _windows(vocab: int, count: int = 3, length: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, vocab, (count, length))


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory) -> tuple[object, Path, Path]:
    from transformers import AutoModelForCausalLM

    arch, overrides = CASES[request.param]
    if request.param == "llama":  # the session's export
        model_dir, folder = (
            request.getfixturevalue("tiny_lm_dir"),
            request.getfixturevalue("tiny_lm_onnx"),
        )
    else:
        root = tmp_path_factory.mktemp(request.param)
        model_dir = save_tiny_lm(root / "hf", arch, **overrides)
        result = export_decoder(model_dir, root / "onnx")
        assert result.architecture.lower().startswith(arch)
        assert result.onnx_bytes > 0
        folder = result.path
    assert (folder / "tokenizer.json").is_file() and (folder / "genai_config.json").is_file()
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), model_dir, folder


def test_kv_cache_export_matches_torch_through_prefill_and_decode(exported) -> None:
    model, _, folder = exported
    windows = _windows(model.config.vocab_size)
    # 8 tokens prefilled in one call, then 12 decode steps each fed the previous cache
    parity = decoder_parity(model, folder, windows, prefill=8)
    assert parity.ok, parity
    assert parity.max_abs_error < 1e-4 and parity.agreement == 1.0
    # The whole window in one prefill gives the same logits as prefill + decode.
    session = DecoderSession(folder)
    one_call = session.logits(windows)
    stepwise = session.logits(windows, prefill=1)
    np.testing.assert_allclose(one_call, stepwise, atol=1e-4)


def test_float_export_gives_torch_greedy_tokens_in_onnxruntime_genai(exported) -> None:
    model, _, folder = exported
    prompts = [[5, 6, 7], list(_windows(model.config.vocab_size, 1, 9, seed=3)[0])]
    match = greedy_match(model, folder, prompts, new_tokens=20)
    assert match.identical, match


def test_export_reads_only_its_input_and_replaces_the_output(tiny_lm_dir, tmp_path) -> None:
    before = {p.name: p.read_bytes() for p in tiny_lm_dir.iterdir()}
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_decoder(tiny_lm_dir, out)
    assert not (out / "stale.txt").exists() and (out / "genai_config.json").is_file()
    assert {p.name: p.read_bytes() for p in tiny_lm_dir.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no staging left behind


def test_unsupported_or_incomplete_directories_are_one_line_errors(tiny_lm_dir, tmp_path):
    with pytest.raises(CompressKitError, match="no config.json"):
        check_exportable(tmp_path)
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CompressKitError, match="GPT2LMHeadModel.*GPT-2 is not supported"):
        check_exportable(gpt2)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_bytes((tiny_lm_dir / "config.json").read_bytes())
    with pytest.raises(CompressKitError, match="no tokenizer.json"):
        check_exportable(no_tokenizer)


def test_widths_that_config_does_not_describe_are_rejected(tiny_lm_dir, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_lm_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 100  # the weights still have 128 rows
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CompressKitError, match="gate_proj.*uniform widths"):
        check_exportable(broken)


def test_teacher_forced_logits_follow_torch_on_a_batch(tiny_lm_dir, tiny_lm_onnx) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    windows = _windows(model.config.vocab_size, count=5, length=12, seed=1)
    reference = torch_logits(model, windows, batch=2)
    actual = DecoderSession(tiny_lm_onnx).logits(windows, prefill=4)
    assert actual.shape == reference.shape == (5, 12, model.config.vocab_size)
    assert np.abs(actual - reference).max() < 1e-4
