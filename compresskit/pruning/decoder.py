"""Decoder language models (Hugging Face Llama, Qwen2, Mistral, GPT-2 layouts): where their
layers are, and depth pruning, whole decoder layers ranked by measured importance.

Two layouts cover the families: ``llama`` (``model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, RMSNorms; Qwen2 adds q/k/v biases) and ``gpt2``
(``transformer.h[i].attn.c_attn`` and ``mlp.c_fc/c_proj``, Conv1D weights stored
``(in, out)``). Torch-Pruning's graph does not handle grouped-query attention
(Torch-Pruning #461), so the slicing here is explicit, per layout.

Layer importance: ``hidden`` is how much a layer changes the hidden state it is given
(1 - cosine of its input and output, averaged over calibration tokens: ShortGPT's block
influence, one forward pass); ``perplexity`` is the calibration LM-loss increase when that
layer alone is bypassed (one forward pass per layer).

Example::

    stack = find_decoder(model)
    scores = layer_importance(model, stack, batches, "hidden")
    remove_layers(stack, [i for i in sorted(range(len(scores)), key=scores.__getitem__)[:2]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from compresskit.errors import CompressKitError
from compresskit.pruning.depth import _Bypass
from compresskit.tasks import first_tensor
from compresskit.tasks.causal_lm import next_token_nll

Layout = Literal["llama", "gpt2"]
LayerCriterion = Literal["hidden", "perplexity"]
Batches = Sequence[Sequence[torch.Tensor]]


@dataclass
class DecoderStack:
    """A causal LM's decoder layers: the module owning the ``ModuleList`` and its layout."""

    model: Any  # a transformers PreTrainedModel
    owner: nn.Module
    attr: str
    layout: Layout

    @property
    def layers(self) -> Any:  # an nn.ModuleList of layout-specific layers
        return getattr(self.owner, self.attr)

    @property
    def config(self) -> Any:
        return self.model.config


def _is_llama_layer(layer: nn.Module) -> bool:
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return all(
        isinstance(getattr(attention, p, None), nn.Linear)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    ) and all(
        isinstance(getattr(mlp, p, None), nn.Linear) for p in ("gate_proj", "up_proj", "down_proj")
    )


def _is_gpt2_layer(layer: nn.Module) -> bool:
    attention, mlp = getattr(layer, "attn", None), getattr(layer, "mlp", None)
    names = [(attention, "c_attn"), (attention, "c_proj"), (mlp, "c_fc"), (mlp, "c_proj")]
    return all(type(getattr(m, n, None)).__name__ == "Conv1D" for m, n in names)


def find_decoder(model: nn.Module, *, what: str = "prune_decoder") -> DecoderStack:
    """The decoder layers of ``model``; a one-line error for anything else."""
    config = getattr(model, "config", None)
    base = getattr(model, "base_model", None)
    for attr, layout, check in (
        ("layers", "llama", _is_llama_layer),
        ("h", "gpt2", _is_gpt2_layer),
    ):
        layers = getattr(base, attr, None)
        if config is not None and isinstance(layers, nn.ModuleList) and len(layers):
            if all(check(layer) for layer in layers):
                return DecoderStack(model, base, attr, layout)  # type: ignore[arg-type]
    raise CompressKitError(
        f"{what}: {type(model).__name__} is not a decoder language model of a supported "
        "layout (Llama/Qwen2/Mistral: model.layers[i].self_attn.q_proj and mlp.gate_proj; "
        "GPT-2: transformer.h[i].attn.c_attn); for other models use prune_channels"
    )


def _layer_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return first_tensor(args) if args else kwargs.get("hidden_states")


@torch.no_grad()
def _block_influence(model: nn.Module, stack: DecoderStack, batches: Batches) -> list[float]:
    totals = torch.zeros(len(stack.layers), dtype=torch.float64)
    counts = torch.zeros(len(stack.layers), dtype=torch.float64)

    def hook(index: int) -> Any:
        def measure(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x, y = _layer_input(args, kwargs), first_tensor(output)
            assert x is not None and y is not None
            cosine = F.cosine_similarity(x.double(), y.double(), dim=-1)
            totals[index] += float((1 - cosine).sum())
            counts[index] += cosine.numel()

        return measure

    handles = [
        layer.register_forward_hook(hook(i), with_kwargs=True)
        for i, layer in enumerate(stack.layers)
    ]
    try:
        for batch in batches:
            model(batch[0])
    finally:
        for handle in handles:
            handle.remove()
    return (totals / counts.clamp(min=1)).tolist()


@torch.no_grad()
def calibration_loss(model: nn.Module, batches: Batches) -> float:
    """Mean next-token loss of ``model`` over ``(input_ids, labels)`` batches."""
    total, count = 0.0, 0
    for ids, *_, labels in batches:
        nll, n = next_token_nll(model(ids).logits, labels)
        total, count = total + float(nll), count + n
    return total / max(count, 1)


def layer_importance(
    model: nn.Module, stack: DecoderStack, batches: Batches, criterion: LayerCriterion
) -> list[float]:
    """Per decoder layer, how much the model needs it (higher is kept; see the module doc)."""
    was_training = model.training
    model.eval()
    try:
        if criterion == "hidden":
            return _block_influence(model, stack, batches)
        base = calibration_loss(model, batches)
        scores = []
        for layer in stack.layers:
            bypass = _Bypass(layer)
            try:
                scores.append(calibration_loss(model, batches) - base)
            finally:
                bypass.remove()
        return scores
    finally:
        model.train(was_training)


def remove_layers(stack: DecoderStack, indices: Sequence[int]) -> None:
    """Delete the decoder layers at ``indices``; the config, the per-layer attention types
    and each attention's layer index (its KV-cache slot) follow the new numbering."""
    config, layers = stack.config, stack.layers
    drop = set(indices)
    kept = [i for i in range(len(layers)) if i not in drop]
    if not kept:
        raise CompressKitError(
            f"prune_decoder_depth: removing {len(drop)} of {len(layers)} layers leaves none; "
            "remove fewer"
        )
    if stack.layout == "gpt2" and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise CompressKitError(
            "prune_decoder_depth: this GPT-2 scales attention by its layer index "
            "(scale_attn_by_inverse_layer_idx), which renumbering would change; prune width only"
        )
    setattr(stack.owner, stack.attr, nn.ModuleList([layers[i] for i in kept]))
    for new, layer in enumerate(stack.layers):
        attention = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [layer_types[i] for i in kept]
