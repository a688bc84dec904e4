"""A tiny causal LM saved as a Hugging Face directory, with a tokenizer trained offline.

For the KV-cache export, low-bit and generation tests: a few hundred KB, built in about a
second, deterministic under its seed. The tokenizer is a byte-level BPE (the SmolLM2 /
GPT-2 kind), so onnxruntime-genai's tokenizer reads it like a real model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

TINY_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "a small language model is exported with its key and value cache",
    "numbers like 12, 345 and 6789 are tokens too",
    "hello world, this is a tiny corpus for a tiny tokenizer",
]
EOS = "<|endoftext|>"


def tiny_tokenizer(vocab_size: int = 300) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on :data:`TINY_TEXT`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TINY_TEXT * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS
    )


def tiny_lm_config(
    arch: Literal["llama", "qwen2"] = "llama", *, vocab_size: int = 300, **overrides: Any
) -> Any:
    """Two layers, hidden 64, 4 query heads over 2 KV heads (grouped-query attention).

    ``initializer_range`` is large so that greedy decoding of the random model does not
    collapse to one repeated token (a test of identical greedy tokens would be vacuous).
    """
    from transformers import LlamaConfig, Qwen2Config

    settings: dict[str, Any] = dict(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    settings.update(overrides)
    return (LlamaConfig if arch == "llama" else Qwen2Config)(**settings)


def save_tiny_lm(
    path: Path, arch: Literal["llama", "qwen2"] = "llama", *, seed: int = 0, **overrides: Any
) -> Path:
    """Save a random tiny causal LM and its tokenizer to ``path`` (``from_pretrained`` ready)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = tiny_lm_config(arch, vocab_size=len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # init leaves biases at 0 and norms at 1: an export could drop them
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.2)
            elif "norm" in name:
                parameter.uniform_(0.5, 1.5)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
