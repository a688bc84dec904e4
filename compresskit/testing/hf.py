"""Tiny Hugging Face model directories and the files a user brings with them (a CSV of
texts and labels, a folder of class folders of images), built in code for tests.

Each model is a real transformers class from a small random config, saved with
``save_pretrained`` next to its tokenizer or image processor, as a user's would be.
Needs ``transformers``.

Example::

    directory = save_tiny_text_model("distilbert", tmp_path / "model")
    write_text_csv(tmp_path / "reviews.csv")
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The class of a text is the sentiment word it repeats; the rest is filler.
CLASS_WORDS = {
    "bad": ["awful", "dull", "boring"],
    "fine": ["okay", "decent", "plain"],
    "good": ["great", "superb", "moving"],
}
FILLER = "the a film story cast plot acting music scenes ending camera script".split()
VOCAB = SPECIAL + FILLER + [w for words in CLASS_WORDS.values() for w in words]

# model type -> (config class, model class, config fields)
TEXT_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert": (
        "BertConfig",
        "BertForSequenceClassification",
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 32,
        },
    ),
    "minilm": (
        "BertConfig",
        "BertModel",
        {
            "hidden_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 32,
        },
    ),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 32},
    ),
    "roberta": (
        "RobertaConfig",
        "RobertaForSequenceClassification",
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 34,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
        },
    ),
    "gpt2": (
        "GPT2Config",
        "GPT2ForSequenceClassification",
        {
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 24,
            "bos_token_id": 2,
            "eos_token_id": 3,
        },
    ),
}


def tiny_tokenizer(*, pad: bool = True) -> Any:  # noqa: ANN401
    """A word-level tokenizer over :data:`VOCAB` ([CLS] text [SEP]); ``pad=False`` leaves
    it without a padding token, as GPT-2's is."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokens = {
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "eos_token": "[SEP]",
        "bos_token": "[CLS]",
    }
    if pad:
        tokens["pad_token"] = "[PAD]"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


def save_tiny_text_model(kind: str, directory: Path, *, num_labels: int = 3) -> Path:
    """Save a tiny random ``kind`` (a :data:`TEXT_MODELS` key) with its tokenizer."""
    import transformers

    config_name, model_name, fields = TEXT_MODELS[kind]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(vocab_size=len(VOCAB), **fields)
    if model_name.endswith("ForSequenceClassification"):
        config.num_labels = num_labels
        config.id2label = dict(enumerate(sorted(CLASS_WORDS)[:num_labels]))
        config.label2id = {v: k for k, v in config.id2label.items()}
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(directory)
    tiny_tokenizer(pad=kind != "gpt2").save_pretrained(directory)
    return directory


def texts_and_labels(count: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` short reviews and their class names (:data:`CLASS_WORDS`)."""
    rng = np.random.default_rng(seed)
    names = sorted(CLASS_WORDS)
    rows = []
    for _ in range(count):
        label = names[int(rng.integers(len(names)))]
        words = list(rng.choice(FILLER, size=int(rng.integers(4, 10))))
        for _ in range(2):
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(CLASS_WORDS[label])))
        rows.append((" ".join(words), label))
    return rows


def write_text_csv(path: Path, *, count: int = 240, seed: int = 0) -> Path:
    """A CSV with columns ``review`` and ``sentiment`` (names, not ids)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows(texts_and_labels(count, seed=seed))
    return path


def save_tiny_vit(directory: Path, *, num_labels: int = 3, image_size: int = 16) -> Path:
    """Save a tiny random ``ViTForImageClassification`` with its image processor."""
    import transformers

    torch.manual_seed(0)
    names = ["circle", "square", "stripes"][:num_labels]
    fields: dict[str, Any] = {
        "image_size": image_size,
        "patch_size": 4,
        "num_channels": 3,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "id2label": dict(enumerate(names)),
        "label2id": {name: i for i, name in enumerate(names)},
    }
    config = transformers.ViTConfig(**fields)
    transformers.ViTForImageClassification(config).eval().save_pretrained(directory)
    processor = transformers.ViTImageProcessor(size={"height": image_size, "width": image_size})
    processor.save_pretrained(directory)
    return directory


def write_image_folder(root: Path, *, per_class: int = 30, size: int = 20, seed: int = 0) -> Path:
    """Class folders ``circle``, ``square``, ``stripes`` of small noisy PNG drawings."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    shapes = {
        "circle": ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.1),
        "square": (abs(yy - 0.5) < 0.3) & (abs(xx - 0.5) < 0.3),
        "stripes": (np.floor(xx * 6) % 2 == 0),
    }
    for name, shape in shapes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            color = rng.uniform(0.4, 1.0, size=3)
            noise = rng.normal(0, 0.15, size=(size, size, 3))
            pixels = np.clip(shape[..., None] * color + noise, 0, 1)
            Image.fromarray((pixels * 255).astype(np.uint8)).save(root / name / f"{index}.png")
    return root
