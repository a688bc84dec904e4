"""A compressed Hugging Face model written back as a Hugging Face directory: a config with
the new sizes, safetensors weights and the tokenizer or image processor, which
``from_pretrained`` reloads with no compresskit code.

The config says what changed where it can: the number of layers (depth pruning) and a
feed-forward width that every layer shares (channel pruning). Quantized layers are
written as the float layers they replace, holding the weights as int8 rounds them (the
int8 model itself is ``model.onnx``). Conv1D layers go back to their transposed layout.
What a config cannot express (a different head count per layer, per-layer FFN widths)
is refused with the reason; ``model.pt`` and ``model.onnx`` still hold the model.

Example::

    reason = save_hf_directory(candidate, run_dir / "pruned" / "hf")
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.models.hf import FFN_LAYERS, HuggingFaceModel


def _weight(module: nn.Module, attr: str) -> torch.Tensor:
    """The float value of ``module.attr`` as the compressed model computes with it."""
    fake_quant = getattr(module, "_fake_quant_weight", None)
    if attr == "weight" and callable(fake_quant):
        return fake_quant().detach()  # type: ignore[no-any-return]
    value = getattr(module, attr)
    return value.detach() if isinstance(value, torch.Tensor) else value


def _config(wrapper: HuggingFaceModel) -> Any:  # noqa: ANN401
    """A copy of the model's config with its layer count and FFN width as pruned."""
    inner: Any = wrapper.model
    config = copy.deepcopy(inner.config)
    fresh = type(inner)(copy.deepcopy(inner.config))
    for name, module in inner.named_modules():
        if isinstance(module, nn.ModuleList) and name:
            built = fresh.get_submodule(name)
            if isinstance(built, nn.ModuleList) and len(built) != len(module):
                config.num_hidden_layers = len(module)
    ffn = FFN_LAYERS.get(config.model_type)
    if ffn is not None:
        field, suffix, _ = ffn
        widths = {
            m.out_features
            for n, m in inner.named_modules()
            if n.endswith(suffix) and isinstance(m, nn.Linear)
        }
        if len(widths) == 1:
            setattr(config, field, widths.pop())
    return config


def hf_state(wrapper: HuggingFaceModel, fresh: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``fresh`` (a float build of the same class) takes, from ``wrapper``."""
    compressed = dict(wrapper.model.named_modules())
    state = {}
    for key, expected in fresh.state_dict().items():
        owner, _, attr = key.rpartition(".")
        module = compressed.get(owner)
        if module is None or not hasattr(module, attr):
            state[key] = expected  # e.g. a buffer built from the config (position ids)
            continue
        value = _weight(module, attr).float()
        if owner in wrapper.conv1d and attr == "weight":
            value = value.t()
        state[key] = value.contiguous()
    return state


def save_hf_directory(wrapper: HuggingFaceModel, directory: Path) -> str | None:
    """Write ``wrapper`` as a Hugging Face directory; None when written, else why not."""
    if wrapper.head is not None:
        return (
            f"its classification head was fitted by compresskit on a bare "
            f"{type(wrapper.model).__name__}, which has no head of its own"
        )
    config = _config(wrapper)
    inner: Any = wrapper.model
    fresh = type(inner)(copy.deepcopy(config)).eval()
    state = hf_state(wrapper, fresh)
    expected = fresh.state_dict()
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        return (
            f"{wrong[0]} is {tuple(state[wrong[0]].shape)} but a {type(config).__name__} "
            f"builds {tuple(expected[wrong[0]].shape)} (a head count or width that differs "
            "by layer has no config field)"
        )
    fresh.load_state_dict(state, strict=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        preprocessing = wrapper.preprocessing
        for maker in (
            getattr(preprocessing, "tokenizer", None),
            getattr(preprocessing, "image_processor", None),
        ):
            if maker is not None:
                maker.save_pretrained(str(tmp))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return None
