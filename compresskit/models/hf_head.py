"""A classification head for a bare Hugging Face encoder (a sentence embedder such as
all-MiniLM-L6-v2 given ``--task classification``): logistic regression on its
L2-normalised mean-pooled embeddings of the training split, the encoder frozen, stored
as the wrapper's ``nn.Linear`` head. The sentiment case of the benchmarks is built the
same way, so it runs from the command line alone on a CSV of texts and labels.

Example::

    fit_head(wrapper, bundle)
    # -> 'classification head fitted on 10156 training samples (2 classes, train accuracy 0.81)'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from compresskit.data.bundle import DataBundle
from compresskit.errors import CompressKitError
from compresskit.models.hf import HuggingFaceModel


@torch.no_grad()
def _embeddings(model: HuggingFaceModel, bundle: DataBundle) -> tuple[np.ndarray, np.ndarray]:
    task, model.task = model.task, "embedding"
    try:
        chunks, labels = [], []
        for *inputs, y in bundle.loader("train", batch_size=128):
            chunks.append(nn.functional.normalize(model.eval()(*inputs), dim=-1).numpy())
            labels.append(y.numpy())
    finally:
        model.task = task
    return np.concatenate(chunks), np.concatenate(labels)


def fit_head(model: HuggingFaceModel, bundle: DataBundle, source: dict[str, Any]) -> str:
    """Fit ``model``'s head on ``bundle``'s training split; record it in ``source`` (the
    recipe ``model.pt`` is rebuilt from). Returns what was done, for the run's notes."""
    from sklearn.linear_model import LogisticRegression

    classes = bundle.num_classes
    if not classes or not bundle.contract.labelled:
        raise CompressKitError(
            f"a classification head for {type(model.model).__name__} is fitted on labels, but "
            f"{bundle.name} has none; give --data a label column or use --task embedding"
        )
    x, y = _embeddings(model, bundle)
    if len(np.unique(y)) < 2:
        raise CompressKitError(f"{bundle.name}: the training split holds one class; give more data")
    regression = LogisticRegression(C=10.0, max_iter=2000).fit(x, y)
    head = nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4 if classes > len(regression.classes_) else 0.0)
        weight, bias = regression.coef_, regression.intercept_
        if len(regression.classes_) == 2:  # one decision function: logits (-f/2, f/2)
            weight, bias = (
                np.stack([-weight[0] / 2, weight[0] / 2]),
                np.array([-bias[0] / 2, bias[0] / 2]),
            )
        for row, label in enumerate(regression.classes_):
            head.weight[int(label)] = torch.from_numpy(weight[row]).float()
            head.bias[int(label)] = float(bias[row])
    model.head = head
    source["head_classes"] = classes
    accuracy = float(regression.score(x, y))
    return (
        f"classification head fitted on {len(y)} training samples of the frozen encoder "
        f"({classes} classes, train accuracy {accuracy:.2f})"
    )
