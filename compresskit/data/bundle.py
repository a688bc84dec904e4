"""A dataset split for compression: training, validation, calibration and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from compresskit.errors import CompressKitError

Split = Literal["train", "val", "calibration", "eval"]
Task = Literal["classification", "embedding", "causal-lm"]
TASKS: tuple[Task, ...] = ("classification", "embedding", "causal-lm")


@dataclass(frozen=True)
class DataBundle:
    """Calibration, training, validation and evaluation splits of one task.

    Each split yields ``(*inputs, label)`` batches; the model is called as ``model(*inputs)``.

    ``task`` says what the model outputs. ``classification`` (the default): logits of
    shape ``(batch, num_classes)``, scored by accuracy. ``embedding``: a vector of shape
    ``(batch, num_classes)``, so ``num_classes`` is the embedding width; the labels in the
    splits are ignored (any placeholder tensor, e.g. zeros) and candidates are scored by
    the cosine of their embeddings to the baseline's. ``causal-lm``: token windows
    ``(batch, seq_len)`` whose labels are the ids themselves; ``num_classes`` is the
    vocabulary (see :mod:`compresskit.data.text`).

    ``eval`` is a fixed hold-out (it does not move with the seed, so runs compare) that
    reports use and training never sees; ``val`` (carved from the training data) is what
    training passes select checkpoints on. The seed picks the calibration subset and the
    training order.

    >>> bundle = load_data("digits", seed=0)          # doctest: +SKIP
    >>> x, y = next(iter(bundle.loader("eval", batch_size=32)))
    >>> embedder = dataclasses.replace(bundle, task="embedding", num_classes=384)
    ...                                                                 # doctest: +SKIP
    """

    name: str
    num_classes: int  # classes; for task="embedding", the embedding width
    input_shape: tuple[int, ...]  # of the first input, without the batch axis
    train: Dataset
    val: Dataset
    calibration: Dataset
    eval: Dataset
    seed: int = 0
    # Inputs whose second axis varies too (token ids and masks of text models).
    dynamic_sequence: bool = False
    task: Task = "classification"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise CompressKitError(
                f"data {self.name}: task {self.task!r} is not one of {', '.join(TASKS)}"
            )

    @property
    def is_embedding(self) -> bool:
        """The model outputs an embedding (of width ``num_classes``), not logits."""
        return self.task == "embedding"

    def loader(self, split: Split, *, batch_size: int = 64, shuffle: bool = False) -> DataLoader:
        """A loader over one split; shuffling is seeded by the bundle's seed."""
        dataset = {
            "train": self.train,
            "val": self.val,
            "calibration": self.calibration,
            "eval": self.eval,
        }[split]
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """A real batch from the calibration split, used for tracing and export.

        Every split yields ``(*inputs, label)``; this returns ``inputs``."""
        *inputs, _ = next(iter(self.loader("calibration", batch_size=batch_size)))
        return tuple(inputs)


def tensor_dataset(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
    return TensorDataset(x.contiguous(), y.long().contiguous())


def split(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    name: str,
    seed: int,
    eval_fraction: float = 0.2,
    val_fraction: float = 0.1,
    calibration_size: int = 256,
    x_eval: torch.Tensor | None = None,
    y_eval: torch.Tensor | None = None,
) -> DataBundle:
    """Split arrays into a bundle. The eval split comes from ``x_eval``/``y_eval`` when a
    dataset has its own test set, else from a permutation with a fixed seed (0)."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if x_eval is None or y_eval is None:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        n_eval = max(1, int(round(len(x) * eval_fraction)))
        x_eval, y_eval = x[order[:n_eval]], y[order[:n_eval]]
        x, y = x[order[n_eval:]], y[order[n_eval:]]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    n_val = max(1, int(round(len(x) * val_fraction)))
    val = tensor_dataset(x[order[:n_val]], y[order[:n_val]])
    train = tensor_dataset(x[order[n_val:]], y[order[n_val:]])
    calibration_order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    calibration = Subset(train, calibration_order[: min(calibration_size, len(train))].tolist())
    num_classes = int(max(int(y.max()), int(y_eval.max()))) + 1
    return DataBundle(
        name=name,
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        train=train,
        val=val,
        calibration=calibration,
        eval=tensor_dataset(x_eval, y_eval),
        seed=seed,
    )
