"""Bad values reaching the library past the command line (a factory's data, a model built
in code, training that diverged) still end in a one-line CompressKitError."""

from __future__ import annotations

import copy

import pytest
import torch

import compresskit
from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.testing import TinyCNN


def test_nan_weights_in_a_model_built_in_code(tiny) -> None:
    model = TinyCNN()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(CompressKitError, match="head.weight holds 1 NaN"):
        compresskit.run("default", model=model, data=tiny, out="never")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_calibration_that_sees_nan_or_inf_activations(tiny, bad: float) -> None:
    """Two bad samples among clean ones: the run's output check does not see them, the
    calibration does."""
    x, y = tiny.calibration.dataset.tensors  # type: ignore[attr-defined]
    x = x.clone()
    x[5] = bad
    poisoned = copy.copy(tiny)
    object.__setattr__(poisoned, "calibration", torch.utils.data.TensorDataset(x, y))
    ctx = Context(data=poisoned, teacher=None, example_inputs=tiny.example_inputs(2))
    with pytest.raises(CompressKitError, match="calibration saw NaN or infinite activations"):
        Quantize(QuantizeConfig()).apply(TinyCNN().eval(), ctx)


def test_diverged_weights_are_named_at_quantization(tiny) -> None:
    model = TinyCNN().eval()
    with torch.no_grad():
        model.features[0].weight.fill_(float("inf"))
    ctx = Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))
    with pytest.raises(CompressKitError, match="NaN or infinite"):
        Quantize(QuantizeConfig()).apply(model, ctx)
