"""Width pruning of decoder language models: attention heads aware of grouped-query
attention, MLP neurons, and the hidden size across all layers (Minitron).

Every layer keeps the same widths, so the result is a standard config (``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``intermediate_size``, ``hidden_size``) that
``from_pretrained`` reloads and standard exporters take.

Grouped-query attention: KV head ``j`` serves query heads ``j*r .. (j+1)*r - 1``
(``r = heads / kv_heads``, transformers' ``repeat_kv``). Query heads are pruned inside their
group, the same number from every group, or whole groups go with their KV head.

Scores (higher is kept), collected once on the unpruned model:

- ``magnitude``: L2 norm of the weights a unit owns (a head's query rows and output
  columns; a neuron's gate/up rows and down column; a hidden channel's column or row in
  every matrix and its embedding column).
- ``activation`` (calibration data, Minitron): a head's mean contribution to the residual
  stream ``|| W_o[:, head] a_head ||``, a neuron's mean ``|activation|`` times its down
  column's norm, a hidden channel's mean ``|output|`` summed over every normalisation.

Example::

    scores = width_scores(model, stack, "activation", batches, heads=True, mlp=True)
    keep_query_heads(stack, choose_heads(scores.heads, per_group=2, kv_keep=None, ...))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.pruning.decoder import Batches, DecoderStack

Importance = Literal["magnitude", "activation"]


@dataclass
class WidthScores:
    heads: list[torch.Tensor] | None = None  # per layer: one score per query head
    neurons: list[torch.Tensor] | None = None  # per layer: one score per MLP neuron
    hidden: torch.Tensor | None = None  # one score per hidden channel


def attention_shape(stack: DecoderStack) -> tuple[int, int, int]:
    """(query heads, KV heads, head size) of a Llama-layout decoder."""
    config = stack.config
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, int(head_dim)


def mlp_modules(layer: Any, layout: str) -> tuple[list[tuple[Any, int]], Any]:
    """The MLP's input projections (module, axis of the neuron) and its output projection."""
    mlp: Any = layer.mlp
    if layout == "gpt2":
        return [(mlp.c_fc, 1)], mlp.c_proj
    return [(mlp.gate_proj, 0), (mlp.up_proj, 0)], mlp.down_proj


def _out_axis(module: Any) -> int:
    """The weight axis of output features: 0 for nn.Linear, 1 for GPT-2's Conv1D."""
    return 0 if isinstance(module, nn.Linear) else 1


def norms(stack: DecoderStack) -> list[Any]:
    """Every normalisation on the residual stream, the final one included."""
    names = (
        ("ln_1", "ln_2")
        if stack.layout == "gpt2"
        else ("input_layernorm", "post_attention_layernorm")
    )
    modules = [getattr(layer, n) for layer in stack.layers for n in names]
    final = getattr(stack.owner, "ln_f" if stack.layout == "gpt2" else "norm")
    return [*modules, final]


def hidden_projections(layer: Any) -> tuple[list[nn.Linear], list[nn.Linear]]:
    """A Llama-layout layer's projections that read the hidden state (their input
    features are hidden channels) and those that write it (their outputs are)."""
    attention: Any = layer.self_attn
    mlp: Any = layer.mlp
    readers = [attention.q_proj, attention.k_proj, attention.v_proj, mlp.gate_proj, mlp.up_proj]
    return readers, [attention.o_proj, mlp.down_proj]


# -- scores ----------------------------------------------------------------------------


def _magnitude(
    stack: DecoderStack, scores: WidthScores, heads: bool, mlp: bool, hidden: bool
) -> None:
    layers = list(stack.layers)
    if heads:
        q, _, d = attention_shape(stack)
        scores.heads = []
        for layer in layers:
            attention: Any = layer.self_attn
            rows = attention.q_proj.weight.detach().reshape(q, d, -1).pow(2).sum((1, 2))
            cols = attention.o_proj.weight.detach().reshape(-1, q, d).pow(2).sum((0, 2))
            scores.heads.append((rows + cols).sqrt())
    if mlp:
        scores.neurons = []
        for layer in layers:
            inputs, output = mlp_modules(layer, stack.layout)
            total = sum(m.weight.detach().pow(2).sum(1 - axis) for m, axis in inputs)
            out_w = output.weight.detach()
            total = total + out_w.pow(2).sum(_out_axis(output))
            scores.neurons.append(torch.as_tensor(total).sqrt())
    if hidden:
        embed = stack.model.get_input_embeddings().weight.detach()
        total = embed.pow(2).sum(0)
        for layer in layers:
            readers, writers = hidden_projections(layer)
            for module in readers:
                total = total + module.weight.detach().pow(2).sum(0)
            for module in writers:
                total = total + module.weight.detach().pow(2).sum(1)
        scores.hidden = total.sqrt()


@torch.no_grad()
def _activation(
    model: nn.Module,
    stack: DecoderStack,
    batches: Batches,
    scores: WidthScores,
    heads: bool,
    mlp: bool,
    hidden: bool,
) -> None:
    layers = list(stack.layers)
    handles = []
    tokens = [0]
    if heads:
        q, _, d = attention_shape(stack)
        head_sum = [torch.zeros(q, dtype=torch.float64) for _ in layers]

        def head_hook(index: int, o_proj: nn.Linear) -> Any:
            def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                a = args[0].reshape(-1, q, d).float()
                w = o_proj.weight.float().reshape(-1, q, d)
                contribution = torch.einsum("nhd,ehd->nhe", a, w).norm(dim=-1)
                head_sum[index] += contribution.sum(0).double()

            return hook

        for i, layer in enumerate(layers):
            o_proj = layer.self_attn.o_proj  # type: ignore[union-attr]
            handles.append(o_proj.register_forward_pre_hook(head_hook(i, o_proj)))
    if mlp:
        neuron_sum: list[torch.Tensor] = []

        def neuron_hook(index: int) -> Any:
            def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                x = args[0].reshape(-1, args[0].shape[-1]).abs().double().sum(0)
                neuron_sum[index] += x

            return hook

        for i, layer in enumerate(layers):
            _, output = mlp_modules(layer, stack.layout)
            size = output.weight.shape[1 - _out_axis(output)]
            neuron_sum.append(torch.zeros(size, dtype=torch.float64))
            handles.append(output.register_forward_pre_hook(neuron_hook(i)))
    if hidden:
        width = int(stack.config.hidden_size)
        channel_sum = torch.zeros(width, dtype=torch.float64)

        def norm_hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            nonlocal channel_sum
            channel_sum = channel_sum + output.reshape(-1, width).abs().double().sum(0)

        handles += [norm.register_forward_hook(norm_hook) for norm in norms(stack)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch[0])
            tokens[0] += batch[0].numel()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    count = max(tokens[0], 1)
    if heads:
        scores.heads = [(s / count).float() for s in head_sum]
    if mlp:
        scores.neurons = []
        for layer, total in zip(layers, neuron_sum, strict=True):
            _, output = mlp_modules(layer, stack.layout)
            column = output.weight.detach().pow(2).sum(_out_axis(output)).sqrt()
            scores.neurons.append((total / count).float() * column.float())
    if hidden:
        scores.hidden = (channel_sum / count).float()


def width_scores(
    model: nn.Module,
    stack: DecoderStack,
    importance: Importance,
    batches: Batches,
    *,
    heads: bool = False,
    mlp: bool = False,
    hidden: bool = False,
) -> WidthScores:
    """Scores of the units that will be pruned (see the module docstring)."""
    scores = WidthScores()
    if importance == "magnitude":
        _magnitude(stack, scores, heads, mlp, hidden)
    else:
        _activation(model, stack, batches, scores, heads, mlp, hidden)
    return scores


# -- targets ---------------------------------------------------------------------------


def check_head_targets(
    heads: int, kv_heads: int, *, num_attention_heads: int, num_key_value_heads: int
) -> int:
    """Query heads per KV group after pruning; a one-line error for targets that break the
    grouping of grouped-query attention."""
    per_group = heads // kv_heads
    if num_key_value_heads > kv_heads or num_key_value_heads < 1:
        raise CompressKitError(
            f"prune_decoder_width: num_key_value_heads {num_key_value_heads} is not in "
            f"1..{kv_heads} "
            "(the model's KV heads); whole groups can only be removed"
        )
    if num_attention_heads % num_key_value_heads:
        multiples = [num_key_value_heads * r for r in range(1, per_group + 1)]
        raise CompressKitError(
            f"prune_decoder_width: {num_attention_heads} query heads do not split evenly over "
            f"{num_key_value_heads} KV heads (grouped-query attention gives every KV head the "
            f"same number of query heads); use one of {', '.join(map(str, multiples))}"
        )
    keep = num_attention_heads // num_key_value_heads
    if not 1 <= keep <= per_group:
        raise CompressKitError(
            f"prune_decoder_width: {num_attention_heads} query heads over {num_key_value_heads} "
            f"KV heads is {keep} per group, but each group has {per_group}; use at most "
            f"{per_group * num_key_value_heads}"
        )
    return keep


def choose_heads(
    scores: Sequence[torch.Tensor], *, kv_heads: int, per_group: int, kv_keep: int
) -> list[tuple[list[int], list[int]]]:
    """Per layer: (kept query heads, kept KV heads). Groups are ranked by the sum of their
    query heads' scores; inside each kept group the best ``per_group`` heads stay."""
    plans = []
    for score in scores:
        grouped = score.reshape(kv_heads, -1)
        groups = sorted(torch.topk(grouped.sum(1), kv_keep).indices.tolist())
        queries = []
        for group in groups:
            best = torch.topk(grouped[group], per_group).indices.tolist()
            queries += [group * grouped.shape[1] + i for i in sorted(best)]
        plans.append((queries, groups))
    return plans


def top_indices(score: torch.Tensor, keep: int) -> list[int]:
    return sorted(torch.topk(score, keep).indices.tolist())


# -- slicing ---------------------------------------------------------------------------


def _index(units: Sequence[int], size: int) -> torch.Tensor:
    return torch.cat([torch.arange(u * size, (u + 1) * size) for u in units])


def slice_module(module: Any, *, outputs: Any = None, inputs: Any = None) -> Any:
    """A copy of an ``nn.Linear`` or GPT-2 ``Conv1D`` keeping the given output and input
    features (index tensors, or None for all)."""
    weight = module.weight.detach()
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    out_axis = _out_axis(module)
    if outputs is not None:
        weight = weight.index_select(out_axis, outputs.to(weight.device))
        bias = bias[outputs] if bias is not None else None
    if inputs is not None:
        weight = weight.index_select(1 - out_axis, inputs.to(weight.device))
    if isinstance(module, nn.Linear):
        new: Any = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype
        )
    else:
        new = type(module)(weight.shape[1], weight.shape[0])  # Conv1D(nf, nx)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(module.training)
    return new


def keep_query_heads(stack: DecoderStack, plans: Sequence[tuple[list[int], list[int]]]) -> None:
    """Keep the planned query and KV heads in every layer (the same counts everywhere)."""
    _, _, d = attention_shape(stack)
    for layer, (queries, groups) in zip(stack.layers, plans, strict=True):
        attention: Any = layer.self_attn
        q_index, kv_index = _index(queries, d), _index(groups, d)
        attention.q_proj = slice_module(attention.q_proj, outputs=q_index)
        attention.k_proj = slice_module(attention.k_proj, outputs=kv_index)
        attention.v_proj = slice_module(attention.v_proj, outputs=kv_index)
        attention.o_proj = slice_module(attention.o_proj, inputs=q_index)
        attention.num_key_value_groups = len(queries) // len(groups)
        for name, value in (("num_heads", len(queries)), ("num_key_value_heads", len(groups))):
            if hasattr(attention, name):
                setattr(attention, name, value)
    config = stack.config
    config.head_dim = d  # explicit: hidden_size / heads no longer gives it
    config.num_attention_heads = len(plans[0][0])
    config.num_key_value_heads = len(plans[0][1])


def keep_neurons(stack: DecoderStack, kept: Sequence[list[int]]) -> None:
    """Keep the given MLP neurons of each layer (gate, up and down together)."""
    for layer, neurons in zip(stack.layers, kept, strict=True):
        index = torch.as_tensor(neurons, dtype=torch.long)
        inputs, output = mlp_modules(layer, stack.layout)
        mlp: Any = layer.mlp
        for module, _ in inputs:
            name = next(n for n, m in mlp.named_children() if m is module)
            setattr(mlp, name, slice_module(module, outputs=index))
        name = next(n for n, m in mlp.named_children() if m is output)
        setattr(mlp, name, slice_module(output, inputs=index))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(neurons)
    width = len(kept[0])
    if stack.layout == "gpt2":
        stack.config.n_inner = width
    else:
        stack.config.intermediate_size = width


def keep_hidden(stack: DecoderStack, channels: Sequence[int]) -> None:
    """Keep the given hidden channels everywhere (embeddings, every projection's input or
    output, every norm, the head); a tied head stays tied."""
    if stack.layout == "gpt2":
        raise CompressKitError(
            "prune_decoder_width: GPT-2 ties its head size to the hidden size "
            "(n_embd / n_head), so hidden cannot be pruned alone; prune mlp or depth"
        )
    model, config = stack.model, stack.config
    _, _, head_dim = attention_shape(stack)
    index = torch.as_tensor(sorted(channels), dtype=torch.long)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    new_embed = nn.Embedding(embed.num_embeddings, len(index), padding_idx=embed.padding_idx).to(
        embed.weight
    )
    with torch.no_grad():
        new_embed.weight.copy_(embed.weight.detach()[:, index.to(embed.weight.device)])
    model.set_input_embeddings(new_embed)
    for layer in stack.layers:
        readers, writers = hidden_projections(layer)
        replaced = {id(m): slice_module(m, inputs=index) for m in readers}
        replaced.update({id(m): slice_module(m, outputs=index) for m in writers})
        for owner in (layer.self_attn, layer.mlp):
            for name, child in list(owner.named_children()):
                if id(child) in replaced:
                    setattr(owner, name, replaced[id(child)])
        for module in (layer, layer.mlp):
            if hasattr(module, "hidden_size"):
                module.hidden_size = len(index)
    for norm in norms(stack):
        norm.weight = nn.Parameter(norm.weight.detach()[index.to(norm.weight.device)].clone())
        if getattr(norm, "bias", None) is not None:
            norm.bias = nn.Parameter(norm.bias.detach()[index.to(norm.bias.device)].clone())
        if hasattr(norm, "normalized_shape"):
            norm.normalized_shape = (len(index),)
    if head is not None:
        if tied:
            new_head = nn.Linear(len(index), head.out_features, bias=False).to(embed.weight)
            new_head.weight = new_embed.weight
        else:
            new_head = slice_module(head, inputs=index)  # type: ignore[assignment]
        model.set_output_embeddings(new_head)
    config.head_dim = head_dim
    config.hidden_size = len(index)
