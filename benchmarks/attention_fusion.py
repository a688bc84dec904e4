"""Self-attention written out op by op, fused into ONNX Runtime's MultiHeadAttention.

An exported Hugging Face encoder computes attention as Reshape/Transpose of the Q, K and V
projections, ``MatMul(Q, K^T)``, a scale, the additive mask, Softmax, ``MatMul(P, V)`` and
the Transpose/Reshape back to ``[batch, sequence, hidden]``: about ten ORT kernels a layer.
``com.microsoft.MultiHeadAttention`` is one CPU kernel for the same thing. ORT's own
transformer optimizer fuses this pattern only when the projections are MatMul + Add on 3D
tensors, which neither our 2D Gemm exports nor QDQ graphs are; this rewrite replaces the
attention core alone, so the projections (int8 or float) stay as exported.

Kept in benchmarks/, not in the package: measured on the MiniLM embedder
(``minilm_attention_fusion.py``), the fused kernel is no faster at batch 32 and 128 tokens,
where attention costs the most, and saves a few percent at batch 1: too little to make
exported files depend on ORT's contrib ops. A pattern that does not match exactly (cross
attention, rotary embeddings, a head count only known at run time) is left as it is.

    model = onnx.load("model.onnx")
    fused = fuse_attention(model)   # how many attention cores were fused
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class _Core:
    """One matched attention core: its Q, K, V [batch, sequence, hidden] tensors, the
    additive bias (if any), its scale and head count, the tensor it produces, and the
    nodes it replaces."""

    query: str
    key: str
    value: str
    bias: str | None
    scale: float
    heads: int
    output: str
    nodes: tuple[Any, ...]


class _Graph:
    """Producers, consumers and constant values of an onnx graph, for pattern matching."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.outputs = {o.name for o in graph.output}

    def source(self, name: str, *op_types: str) -> Any | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type in op_types else None

    def only_use(self, name: str) -> bool:
        return name not in self.outputs and len(self.consumers.get(name, [])) == 1

    def shape_values(self, name: str) -> list[int | None] | None:
        """A Reshape's target shape: constants where known, None where computed."""
        if name in self.constants:
            return [int(v) for v in self.constants[name].reshape(-1)]
        concat = self.source(name, "Concat")
        if concat is None:
            return None
        values: list[int | None] = []
        for part in concat.input:
            if part in self.constants:
                values.extend(int(v) for v in self.constants[part].reshape(-1))
            else:
                values.append(None)  # one dynamic dimension per part (Unsqueeze of a Gather)
        return values

    def width(self, name: str) -> int | None:
        """The last dimension of a projection's output: what the Reshape after a 2D Gemm
        fixes, or the bias of ``MatMul + Add``, or the MatMul's weight."""
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Reshape":
            shape = self.shape_values(node.input[1])
            return shape[-1] if shape and shape[-1] is not None and shape[-1] > 0 else None
        if node.op_type == "Add":
            bias = next((self.constants[x] for x in node.input if x in self.constants), None)
            if bias is not None and bias.ndim == 1:
                return int(bias.shape[0])
            return next((w for x in node.input if (w := self.width(x))), None)
        if node.op_type == "MatMul" and node.input[1] in self.constants:
            return int(self.constants[node.input[1]].shape[-1])
        return None

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _perm(node: Any) -> list[int]:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == "perm":
            return list(helper.get_attribute_value(attribute))
    return []


def _split_heads(g: _Graph, name: str, perm: list[int]) -> tuple[str, int, int, list[Any]] | None:
    """``Transpose(perm)(Reshape(x, [batch, sequence, heads, head_size]))`` -> (x, heads,
    head_size, the two nodes)."""
    transpose = g.source(name, "Transpose")
    if transpose is None or _perm(transpose) != perm or not g.only_use(name):
        return None
    reshape = g.source(transpose.input[0], "Reshape")
    if reshape is None or not g.only_use(reshape.output[0]):
        return None
    shape = g.shape_values(reshape.input[1])
    if shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None:
        return None
    heads, head_size = shape[2], shape[3]
    if heads == -1 and head_size > 0:  # the exporter left the head count to Reshape
        width = g.width(reshape.input[0])
        heads = width // head_size if width and width % head_size == 0 else 0
    if heads <= 0 or head_size <= 0:
        return None
    return reshape.input[0], heads, head_size, [reshape, transpose]


def _from_scores(g: _Graph, name: str) -> bool:
    """``name`` is ``MatMul(Q, K^T)``, or that times a constant (not the mask, which is
    a Mul of the attention mask too)."""
    scaling = g.source(name, "Mul", "Div")
    return bool(g.source(name, "MatMul")) or (
        scaling is not None and any(g.source(x, "MatMul") for x in scaling.input)
    )


def _match(g: _Graph, softmax: Any) -> _Core | None:
    from onnx import helper

    axis = next((helper.get_attribute_value(a) for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    nodes: list[Any] = [softmax]
    scores, bias, scale = softmax.input[0], None, None
    add = g.source(scores, "Add")
    if add is not None and g.only_use(scores):
        scaled = next((x for x in add.input if _from_scores(g, x)), None)
        if scaled is None:
            return None
        bias = add.input[1] if add.input[0] == scaled else add.input[0]
        nodes.append(add)
        scores = scaled
    scaling = g.source(scores, "Mul", "Div")
    if scaling is not None and g.only_use(scores):
        raw = scaling.input[0]
        factor = g.scalar(scaling.input[1])
        if scaling.op_type == "Mul" and factor is None:
            raw, factor = scaling.input[1], g.scalar(scaling.input[0])
        if factor is None or factor == 0:
            return None
        scale = factor if scaling.op_type == "Mul" else 1.0 / factor
        nodes.append(scaling)
        scores = raw
    qk = g.source(scores, "MatMul")
    if qk is None or not g.only_use(scores):
        return None
    query = _split_heads(g, qk.input[0], [0, 2, 1, 3])
    key = _split_heads(g, qk.input[1], [0, 2, 3, 1])
    consumers = g.consumers.get(softmax.output[0], [])
    if query is None or key is None or len(consumers) != 1 or consumers[0].op_type != "MatMul":
        return None
    pv = consumers[0]
    if pv.input[0] != softmax.output[0] or softmax.output[0] in g.outputs:
        return None
    value = _split_heads(g, pv.input[1], [0, 2, 1, 3])
    heads, head_size = query[1], query[2]
    if value is None or (key[1], key[2]) != (heads, head_size) or value[1] != heads:
        return None
    merge = (g.consumers.get(pv.output[0]) or [None])[0]
    if merge is None or merge.op_type != "Transpose" or _perm(merge) != [0, 2, 1, 3]:
        return None
    if not (g.only_use(pv.output[0]) and g.only_use(merge.output[0])):
        return None
    flat = g.consumers[merge.output[0]][0]
    shape = g.shape_values(flat.input[1]) if flat.op_type == "Reshape" else None
    if shape is None or len(shape) != 3 or shape[2] not in (None, -1, heads * value[2]):
        return None
    return _Core(
        query=query[0],
        key=key[0],
        value=value[0],
        bias=bias,
        scale=1.0 if scale is None else scale,  # no scaling node: none to apply
        heads=heads,
        output=flat.output[0],
        nodes=(*nodes, qk, *query[3], *key[3], *value[3], pv, merge, flat),
    )


def fuse_attention(model: Any) -> int:
    """Replace each matched attention core of ``model`` (an onnx.ModelProto) with one
    ``com.microsoft.MultiHeadAttention``, in place; returns how many were fused."""
    from onnx import TensorProto, helper

    g = _Graph(model.graph)
    softmaxes = [node for node in g.graph.node if node.op_type == "Softmax"]
    cores = [core for node in softmaxes if (core := _match(g, node))]
    if not cores:
        return 0
    removed = {id(node) for core in cores for node in core.nodes}
    added: list[Any] = []
    expanded: dict[str, str] = {}  # the bias, broadcast once for every layer that adds it
    for k, core in enumerate(cores):
        inputs = [core.query, core.key, core.value]
        if core.bias is not None:
            if core.bias not in expanded:
                # MultiHeadAttention takes the bias as [batch or 1, heads or 1, sequence,
                # sequence]; the exported mask is [batch, 1, 1, sequence]: Expand it by
                # [1, 1, sequence, 1].
                prefix = f"/attention_fusion/bias_{len(expanded)}"
                added += [
                    helper.make_node("Shape", [core.query], [f"{prefix}/length"], start=1, end=2),
                    helper.make_node(
                        "Concat",
                        [f"{prefix}/ones", f"{prefix}/length", f"{prefix}/one"],
                        [f"{prefix}/shape"],
                        axis=0,
                    ),
                    helper.make_node("Expand", [core.bias, f"{prefix}/shape"], [f"{prefix}/out"]),
                ]
                model.graph.initializer.extend(
                    [
                        helper.make_tensor(f"{prefix}/ones", TensorProto.INT64, [2], [1, 1]),
                        helper.make_tensor(f"{prefix}/one", TensorProto.INT64, [1], [1]),
                    ]
                )
                expanded[core.bias] = f"{prefix}/out"
            inputs += ["", "", expanded[core.bias]]  # bias, key_padding_mask, attention_bias
        added.append(
            helper.make_node(
                "MultiHeadAttention",
                inputs,
                [core.output],
                name=f"/attention_fusion/MultiHeadAttention_{k}",
                domain=MS_DOMAIN,
                num_heads=core.heads,
                scale=core.scale,
            )
        )
    kept = [node for node in g.graph.node if id(node) not in removed]
    _set_nodes(model, _topological([*kept, *added], model.graph))
    _drop_dead(model)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(cores)


def _set_nodes(model: Any, nodes: list[Any]) -> None:
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _topological(nodes: list[Any], graph: Any) -> list[Any]:
    """Nodes in an order where every input is produced before it is read."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"attention fusion left a missing input at {rest[0].name}")
        pending = rest
    return ordered


def _drop_dead(model: Any) -> None:
    """Remove the nodes and initializers nothing reads any more: the head-splitting shape
    arithmetic the fused cores no longer need."""
    graph = model.graph
    while True:
        read = {o.name for o in graph.output} | {n for node in graph.node for n in node.input}
        live = [node for node in graph.node if any(out in read for out in node.output)]
        if len(live) == len(graph.node):
            break
        _set_nodes(model, live)
    read = {n for node in graph.node for n in node.input}
    for initializer in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(initializer)
