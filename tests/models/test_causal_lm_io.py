from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from compresskit.errors import CompressKitError
from compresskit.models.causal_lm import (
    check_same_vocabulary,
    load_causal_lm,
    load_tokenizer,
    save_causal_lm,
    serializable_copy,
)
from compresskit.testing.tiny_lm import TINY_LMS, tiny_llama, tiny_tokenizer


@pytest.mark.parametrize("family", sorted(TINY_LMS))
def test_save_and_reload_keeps_logits(tmp_path: Path, family: str) -> None:
    model = TINY_LMS[family]()
    out = save_causal_lm(model, tiny_tokenizer(), tmp_path / "saved")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    loaded = load_causal_lm(out)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits)
    assert len(loaded.tokenizer) == len(tiny_tokenizer())
    head, embed = loaded.model.get_output_embeddings(), loaded.model.get_input_embeddings()
    assert (head.weight is embed.weight) == bool(model.config.tie_word_embeddings)


def test_serializable_copy_drops_the_quantization_entry() -> None:
    model = tiny_llama()
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}
    copy = serializable_copy(model)
    assert getattr(copy.config, "quantization_config", None) is None
    assert copy.get_output_embeddings().weight is copy.get_input_embeddings().weight
    ids = torch.arange(10).view(1, 10)
    with torch.no_grad():
        torch.testing.assert_close(copy(ids).logits, model(ids).logits)


def test_directory_without_causal_head_is_one_line(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            vocab_size=50,
        )
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(CompressKitError, match="holds a BertModel, which has no causal-LM head"):
        load_causal_lm(tmp_path / "bert")


def test_missing_tokenizer_is_one_line(tmp_path: Path) -> None:
    tiny_llama().save_pretrained(tmp_path / "lm")
    with pytest.raises(CompressKitError, match="has no tokenizer .*tokenizer.save_pretrained"):
        load_causal_lm(tmp_path / "lm")
    with pytest.raises(CompressKitError, match="has no tokenizer"):
        load_tokenizer(tmp_path / "lm")


def test_gguf_without_the_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if it were not installed
    with pytest.raises(CompressKitError, match=r"pip install 'compresskit\[gguf\]'"):
        load_causal_lm(path)


def test_teacher_with_another_vocabulary_is_one_line() -> None:
    check_same_vocabulary(tiny_llama(), tiny_llama(seed=1))
    with pytest.raises(CompressKitError, match="teacher's vocabulary has 200 tokens but the"):
        check_same_vocabulary(tiny_llama(), tiny_llama(vocab_size=200))
