"""Tiny causal language models, a tokenizer and a corpus built in code (no downloads).

Llama with grouped-query attention, Qwen2 and GPT-2 at a few thousand parameters, and a
BPE tokenizer trained in milliseconds on a synthetic corpus whose sentences follow a small
grammar (so a model can learn something from it in a few steps).

>>> model = tiny_llama()
>>> tokenizer = tiny_tokenizer()
>>> bundle = tiny_lm_bundle(tokenizer, seq_len=16)
>>> len(model.model.layers), bundle.task, bundle.input_shape
(3, 'causal-lm', (16,))
"""

from __future__ import annotations

import functools
import random
from typing import Any

import torch

TINY_VOCAB = 128

_SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "the old man", "a child"]
_VERBS = ["sees", "likes", "finds", "follows", "paints", "remembers"]
_OBJECTS = ["the river", "a red ball", "the small house", "the moon", "a green tree"]
_ENDINGS = ["today", "at night", "in the park", "again", "with joy"]


def tiny_documents(count: int = 40, *, seed: int = 0, sentences: int = 6) -> list[str]:
    """``count`` documents of ``sentences`` grammatical sentences each, reproducible."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        parts = [
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_ENDINGS)}."
            for _ in range(sentences)
        ]
        documents.append(" ".join(parts))
    return documents


@functools.cache
def tiny_tokenizer() -> Any:
    """A BPE tokenizer (fewer than :data:`TINY_VOCAB` tokens) trained on the tiny corpus,
    with ``<unk>`` (0) and ``<eos>`` (1). Built once per process (treat it as read-only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB - 8, special_tokens=["<unk>", "<eos>"], show_progress=False
    )
    tokenizer.train_from_iterator(tiny_documents(200, seed=123), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def tiny_llama(seed: int = 0, **overrides: Any) -> Any:
    """A 3-layer Llama with grouped-query attention (4 query heads over 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings: dict[str, Any] = {
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "vocab_size": TINY_VOCAB,
        "max_position_embeddings": 128,
        "tie_word_embeddings": True,
        "eos_token_id": 1,
        "pad_token_id": 1,
        "bos_token_id": None,
    }
    settings.update(overrides)
    _seeded(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def tiny_qwen2(seed: int = 0, **overrides: Any) -> Any:
    """A 3-layer Qwen2 (q/k/v biases, untied head) with 6 query heads over 2 KV heads."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    settings: dict[str, Any] = {
        "hidden_size": 48,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "vocab_size": TINY_VOCAB,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
        "eos_token_id": 1,
        "pad_token_id": 1,
        "bos_token_id": None,
    }
    settings.update(overrides)
    _seeded(seed)
    return Qwen2ForCausalLM(Qwen2Config(**settings)).eval()


def tiny_gpt2(seed: int = 0, **overrides: Any) -> Any:
    """A 3-layer GPT-2 (Conv1D projections, learned positions, tied head)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    settings: dict[str, Any] = {
        "n_embd": 32,
        "n_head": 4,
        "n_layer": 3,
        "n_inner": 64,
        "n_positions": 128,
        "vocab_size": TINY_VOCAB,
        "eos_token_id": 1,
        "bos_token_id": 1,
        "pad_token_id": 1,
    }
    settings.update(overrides)
    _seeded(seed)
    return GPT2LMHeadModel(GPT2Config(**settings)).eval()


TINY_LMS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2}


def tiny_lm_bundle(
    tokenizer: Any | None = None, *, seq_len: int = 16, documents: int = 40, seed: int = 0
) -> Any:
    """The tiny corpus as a causal-LM :class:`DataBundle` (windows of ``seq_len``)."""
    from compresskit.data.text import text_bundle

    return text_bundle(
        tiny_documents(documents),
        tokenizer or tiny_tokenizer(),
        seq_len=seq_len,
        name="tiny-text",
        seed=seed,
    )


class LogitsOnly(torch.nn.Module):
    """A causal LM called as ``model(ids)`` that returns its logits tensor (no cache):
    what tensor-only checks (ONNX export and parity) of the pass tests need."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, use_cache=False).logits  # type: ignore[no-any-return]
