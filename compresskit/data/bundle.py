"""A dataset split for compression: training, validation, calibration and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from compresskit.errors import CompressKitError, first_line
from compresskit.tasks import Task, get_task

Split = Literal["train", "val", "calibration", "eval"]
MIN_SAMPLES = 10  # the fewest that leave every split non-empty


@dataclass(frozen=True)
class DataBundle:
    """Calibration, training, validation and evaluation splits of one task.

    Each split yields ``(*inputs, label)`` batches; the model is called as ``model(*inputs)``.

    ``task`` names the task contract (:mod:`compresskit.tasks`) that says what the model
    outputs and how it is judged: ``classification`` (the default; logits scored by
    accuracy on the labels), ``embedding`` (one vector per sample, scored by cosine to the
    baseline; the labels are placeholders nothing reads). ``num_classes`` is how many
    classes the labels imply (largest label + 1): the model may output more (labels may
    cover a subset of its classes); None where the labels are placeholders. ``causal-lm``:
    token windows ``(batch, seq_len)`` whose labels are the ids themselves; ``num_classes``
    is the vocabulary (see :mod:`compresskit.data.text`).

    ``eval`` is a fixed hold-out (it does not move with the seed, so runs compare) that
    reports use and training never sees; ``val`` (carved from the training data) is what
    training passes select checkpoints on. The seed picks the calibration subset and the
    training order.

    >>> import dataclasses
    >>> from compresskit.data.sources import load_data
    >>> bundle = load_data("digits", seed=0)          # scikit-learn's bundled digits
    >>> x, y = next(iter(bundle.loader("eval", batch_size=32)))
    >>> x.shape, bundle.num_classes
    (torch.Size([32, 1, 8, 8]), 10)
    >>> embedder = dataclasses.replace(bundle, task="embedding")
    """

    name: str
    num_classes: int | None  # classes the labels imply; None for placeholder labels
    input_shape: tuple[int, ...]  # of the first input, without the batch axis
    train: Dataset
    val: Dataset
    calibration: Dataset
    eval: Dataset
    seed: int = 0
    # Inputs whose second axis varies too (token ids and masks of text models).
    dynamic_sequence: bool = False
    task: str = "classification"
    # Class names by label id, when the data named its classes (a CSV's label column,
    # an image folder's class folders): the report keeps the mapping.
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        try:
            get_task(self.task)
        except CompressKitError as error:
            raise CompressKitError(f"data {self.name}: {error}") from None

    @property
    def contract(self) -> Task:
        """The task contract of :attr:`task` (what the model outputs, how it is judged)."""
        return get_task(self.task)

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

    def check_model(self, model: nn.Module) -> None:
        """Raise a one-line error unless ``model`` runs on this data's inputs and returns
        what the task scores (class logits, embeddings, ...)."""
        example = self.example_inputs(batch_size=2)
        try:
            with torch.no_grad():
                output = model.eval()(*example)
        except Exception as error:
            raise CompressKitError(
                f"the model cannot run on {self.name} inputs of shape "
                f"{tuple(example[0].shape[1:])} ({first_line(error)}); check --data and --arch"
            ) from None
        self.contract.check_output(
            output, batch=len(example[0]), data=self.name, classes=self.num_classes
        )
        scored = self.contract.adapt(output, example)
        if scored.is_floating_point() and not bool(torch.isfinite(scored).all()):
            raise CompressKitError(
                f"the model's outputs on {self.name} inputs hold NaN or infinite values; "
                "check the data and the weights for NaN/inf"
            )

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """A real batch from the calibration split, used for tracing and export.

        Every split yields ``(*inputs, label)``; this returns ``inputs``."""
        batch = next(iter(self.loader("calibration", batch_size=batch_size)), None)
        if batch is None:
            raise CompressKitError(f"data {self.name}: the calibration split is empty")
        *inputs, _ = batch
        return tuple(inputs)


Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def tensor_dataset(x: Inputs, y: torch.Tensor) -> TensorDataset:
    inputs = x if isinstance(x, tuple) else (x,)
    return TensorDataset(*(t.contiguous() for t in inputs), y.long().contiguous())


def _take(x: Inputs, index: torch.Tensor) -> Inputs:
    return tuple(t[index] for t in x) if isinstance(x, tuple) else x[index]


def split(
    x: Inputs,
    y: torch.Tensor,
    *,
    name: str,
    seed: int,
    eval_fraction: float = 0.2,
    val_fraction: float = 0.1,
    calibration_size: int = 256,
    x_eval: Inputs | None = None,
    y_eval: torch.Tensor | None = None,
) -> DataBundle:
    """Split arrays into a bundle. The eval split comes from ``x_eval``/``y_eval`` when a
    dataset has its own test set, else from a permutation with a fixed seed (0). A model
    with several inputs (token ids and a mask) takes a tuple of arrays as ``x``."""
    first = x[0] if isinstance(x, tuple) else x
    if len(first) != len(y):
        raise CompressKitError(f"data {name}: x has {len(first)} samples but y has {len(y)}")
    eval_first = x_eval[0] if isinstance(x_eval, tuple) else x_eval
    if len(first) < MIN_SAMPLES or (eval_first is not None and len(eval_first) < 1):
        raise CompressKitError(
            f"data {name}: {len(first)} training sample(s) cannot be split into training, "
            f"validation and evaluation; give at least {MIN_SAMPLES}"
        )
    if x_eval is None or y_eval is None:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        n_eval = max(1, int(round(len(y) * eval_fraction)))
        x_eval, y_eval = _take(x, order[:n_eval]), y[order[:n_eval]]
        x, y = _take(x, order[n_eval:]), y[order[n_eval:]]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    n_val = max(1, int(round(len(y) * val_fraction)))
    val = tensor_dataset(_take(x, order[:n_val]), y[order[:n_val]])
    train = tensor_dataset(_take(x, order[n_val:]), y[order[n_val:]])
    calibration_order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    calibration = Subset(train, calibration_order[: min(calibration_size, len(train))].tolist())
    num_classes = int(max(int(y.max()), int(y_eval.max()))) + 1
    return DataBundle(
        name=name,
        num_classes=num_classes,
        input_shape=tuple((x[0] if isinstance(x, tuple) else x).shape[1:]),
        train=train,
        val=val,
        calibration=calibration,
        eval=tensor_dataset(x_eval, y_eval),
        seed=seed,
    )
