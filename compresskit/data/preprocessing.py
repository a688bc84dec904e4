"""How a model wants its inputs made from raw text or images: its own tokenizer or image
processor, how many positions it has, and the label names it was trained with.

A model loader fills this in (a Hugging Face directory has all of it); the data loaders of
:mod:`compresskit.data.files` and :mod:`compresskit.data.images` read it, so this layer
never imports the model code.

Example::

    Preprocessing(modality="text", tokenizer=tok, max_length=512)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Texts are tokenized at most this long unless the policy's sequence_length says otherwise.
DEFAULT_TEXT_LENGTH = 128


@dataclass(frozen=True)
class Preprocessing:
    """What turns raw samples into the model's inputs.

    ``tokenizer`` is called as ``tokenizer(texts, padding=..., truncation=True,
    max_length=..., return_tensors="pt")`` (a Hugging Face tokenizer); ``image_processor``
    as ``image_processor(images=[PIL images], return_tensors="pt")``. ``max_length`` is the
    number of positions the model accepts (None: unbounded). ``label2id`` holds the model's
    own class names when they mean something (not ``LABEL_0`` ...). ``image_size`` and
    ``channels`` size images when there is no processor."""

    modality: Literal["text", "image"]
    tokenizer: Any = None
    image_processor: Any = None
    max_length: int | None = None
    label2id: dict[str, int] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    channels: int = 3
    input_names: tuple[str, ...] = ()

    def text_length(self, requested: int | None) -> int:
        """The length texts are tokenized to: ``requested`` (the policy's sequence length)
        or the default, never more than the model's positions."""
        length = requested or DEFAULT_TEXT_LENGTH
        return min(length, self.max_length) if self.max_length else length
