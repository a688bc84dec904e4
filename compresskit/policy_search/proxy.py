"""The proxy score of a trial: the task's metric on the val split, computed in torch
against the baseline's outputs on the same batches (the final score is ONNX Runtime's on
the evaluation split, so the search never selects on the split it reports).

Example::

    scorer = ProxyScorer(bundle, model, "accuracy"); scorer(candidate)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compresskit.data import DataBundle


class ProxyScorer:
    """The proxy: the task's metric of a model on the val split in torch, against the
    baseline's outputs on the same batches."""

    def __init__(self, bundle: DataBundle, baseline: nn.Module, metric: str) -> None:
        self.task, self.metric = bundle.contract, metric
        self.batches = list(bundle.loader("val", batch_size=256))
        self.references = [self.task.reference(out) for out in self._outputs(baseline)]
        self.baseline = self(baseline)

    def _outputs(self, model: nn.Module) -> list[Any]:
        model.eval()
        with torch.no_grad():
            return [
                self.task.adapt(model(*inputs), tuple(inputs)).numpy()
                for *inputs, _ in self.batches
            ]

    def __call__(self, model: nn.Module) -> float:
        evaluation = self.task.evaluation()
        outputs = self._outputs(model)
        for (*_, labels), out, reference in zip(
            self.batches, outputs, self.references, strict=True
        ):
            evaluation.update(out, labels.numpy(), reference)
        return float(evaluation.result()[self.metric])
