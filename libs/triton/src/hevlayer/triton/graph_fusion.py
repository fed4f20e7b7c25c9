"""Rewrite the exported encoder graph into onnxruntime's fused transformer kernels.

all-MiniLM-L6-v2 as exported by PyTorch (``torch.onnx`` with scaled-dot-product
attention) computes each layer's self-attention in about 30 small nodes: three
projections, reshapes and transposes into heads, ``q·scale``, ``k·scale``, a
mask bias, the scores' MatMul, Softmax, a NaN guard (``Where(IsNaN(p), 0, p)``),
the MatMul with ``v`` and the transposes back. onnxruntime's own graph optimizer
does not recognise that shape (the NaN guard and the scale split between ``q``
and ``k`` break its attention fusion), so every intermediate is written to memory
and read back, and the guard costs 6 % of the encoder's CPU on its own. GELU is
written out as ``x · 0.5 · (1 + erf(x / √2))``, five nodes.

:func:`fuse_encoder` replaces each layer's attention with one
``com.microsoft.Attention`` node (the three projections packed into one GEMM, the
key padding mask from ``attention_mask``, the same scale) and each written-out GELU
with ``com.microsoft.Gelu`` (onnxruntime then folds the bias add into it). The
computation is the same up to float rounding: on the make-run corpus' texts the
vectors differ by at most about 1e-7 (``tests/triton/test_graph_fusion.py``), and the
encoder takes about 12 % less CPU per text (``bench/triton_serving.py``,
docs/benchmarks.md). The weights stay as the file stores them (int8 with scales); the
packed projection weight is a ``Concat`` that onnxruntime folds into a constant when
the session is created.

The match is strict: a layer whose nodes are not exactly the expected pattern (the
ops and how they connect, the two scales' product, a mask bias that masks padded keys
only: computed from ``attention_mask`` and from no comparison of two positions) is left
as it is, and :class:`FusionReport` says how many were fused. Nothing here is specific
to MiniLM beyond the exporter's shape of a BERT layer; the head count is read from the
reshape into heads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
MASK_NAME = "hevlayer_fused_attention_mask"


@dataclass(frozen=True)
class FusionReport:
    """What :func:`fuse_encoder` changed."""

    attention: int
    """Layers whose self-attention became one ``com.microsoft.Attention`` node."""
    gelu: int
    """Written-out GELUs that became one ``com.microsoft.Gelu`` node."""
    layers: int
    """Softmax nodes in the graph (one per attention layer), fused or not."""


class _Graph:
    """Producers, consumers and constants of a graph's nodes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {init.name: init for init in model.graph.initializer}

    def op(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The node of type ``op_type`` (default domain) that computes ``name``, else None."""
        node = self.producer.get(name)
        if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
            return None
        return node

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type:
            return users[0]
        return None

    def constant(self, name: str) -> npt.NDArray[np.generic] | None:
        """The value of an initializer or a Constant node, else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
        return None

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(()))

    def ancestors(self, name: str) -> tuple[set[str], list[onnx.NodeProto]]:
        """The tensors and the nodes that tensor ``name`` is computed from (itself included)."""
        tensors: set[str] = set()
        nodes: list[onnx.NodeProto] = []
        stack = [name]
        while stack:
            current = stack.pop()
            if current in tensors:
                continue
            tensors.add(current)
            node = self.producer.get(current)
            if node is not None:
                nodes.append(node)
                stack.extend(i for i in node.input if i)
        return tensors, nodes

    def is_key_padding_bias(self, name: str, mask_input: str) -> bool:
        """Whether ``name`` is ``Where(keep, 0, very negative)`` with ``keep`` computed from
        ``mask_input`` and from no comparison of two positions (a causal or banded mask, which
        ``com.microsoft.Attention`` without ``unidirectional`` would not apply)."""
        where = self.op(name, "Where")
        if where is None:
            return False
        keep_value, masked_value = self.scalar(where.input[1]), self.scalar(where.input[2])
        if keep_value != 0.0 or masked_value is None or masked_value > -1e4:
            return False
        tensors, nodes = self.ancestors(where.input[0])
        if mask_input not in tensors:
            return False
        positions = {out for node in nodes if node.op_type in ("Range", "Trilu") for out in node.output}
        for node in nodes:
            if node.op_type == "Trilu":
                return False
            if node.op_type in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal"):
                sides = [self.ancestors(operand)[0] & positions for operand in node.input]
                if all(sides):
                    return False
        return True


@dataclass
class _Layer:
    hidden: str
    weights: tuple[str, str, str]
    biases: tuple[str, str, str]
    heads: int
    scale: float
    output: str
    removed: list[onnx.NodeProto]


def _linear(graph: _Graph, name: str) -> tuple[str, str, str, list[onnx.NodeProto]] | None:
    """``Add(MatMul(hidden, W), b)`` → (hidden, W, b, nodes)."""
    add = graph.op(name, "Add")
    if add is None:
        return None
    matmul = graph.op(add.input[0], "MatMul")
    bias = add.input[1]
    if matmul is None:
        matmul, bias = graph.op(add.input[1], "MatMul"), add.input[0]
    if matmul is None or graph.constant(bias) is None:
        return None
    return matmul.input[0], matmul.input[1], bias, [matmul, add]


def _heads(graph: _Graph, name: str) -> tuple[str, tuple[int, int], list[onnx.NodeProto]] | None:
    """``Transpose(Reshape(x, [b, s, heads, size]), perm=[0, 2, 1, 3])`` →
    (x, (heads, size), nodes); -1 stands for a dimension the reshape infers."""
    transpose = graph.op(name, "Transpose")
    if transpose is None or _attribute(transpose, "perm", None) != [0, 2, 1, 3]:
        return None
    reshape = graph.op(transpose.input[0], "Reshape")
    if reshape is None:
        return None
    shape = graph.producer.get(reshape.input[1])
    if shape is None or shape.op_type != "Concat" or len(shape.input) != 4:
        return None
    dims = [graph.constant(part) for part in shape.input[2:]]
    if any(d is None or d.size != 1 for d in dims):
        return None
    heads, size = (int(d.reshape(-1)[0]) for d in dims if d is not None)
    return reshape.input[0], (heads, size), [transpose, reshape]


def _head_count(split: tuple[int, int], hidden: int) -> int | None:
    """Heads of a ``[heads, size]`` split of ``hidden`` features (one side may be -1)."""
    heads, size = split
    if heads == -1 and size > 0 and hidden % size == 0:
        heads = hidden // size
    elif heads > 0 and size == -1 and hidden % heads == 0:
        size = hidden // heads
    return heads if heads > 0 and heads * size == hidden else None


def _merges_heads(graph: _Graph, reshape: onnx.NodeProto, hidden: int) -> bool:
    """Whether ``reshape`` makes ``[batch, tokens, hidden]`` of ``[batch, tokens, heads, size]``
    (its shape ``Concat(batch, tokens, hidden or -1)``): what the fused Attention outputs."""
    shape = graph.producer.get(reshape.input[1])
    if shape is None or shape.op_type != "Concat" or len(shape.input) != 3:
        return False
    last = graph.constant(shape.input[2])
    return last is not None and last.size == 1 and int(last.reshape(-1)[0]) in (-1, hidden)


def _key_chain(graph: _Graph, name: str) -> tuple[str, list[onnx.NodeProto]] | None:
    """Walk back from ``k·scale``'s tensor input through the exporter's
    Reshape → Transpose(0, 2, 1) → Reshape of ``kᵀ`` to the heads-shaped key."""
    nodes: list[onnx.NodeProto] = []
    current = name
    for op_type in ("Reshape", "Transpose", "Reshape"):
        node = graph.op(current, op_type)
        if node is None or (op_type == "Transpose" and _attribute(node, "perm", None) != [0, 2, 1]):
            return None
        nodes.append(node)
        current = node.input[0]
    return current, nodes


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return list(value) if isinstance(value, list | tuple) else value
    return default


def _match_attention(graph: _Graph, softmax: onnx.NodeProto, mask_input: str) -> _Layer | None:
    scores = graph.op(softmax.input[0], "Add")
    if scores is None or _attribute(softmax, "axis", -1) not in (-1, 3):
        return None
    qk = graph.op(scores.input[0], "MatMul")
    if qk is None or not graph.is_key_padding_bias(scores.input[1], mask_input):
        return None
    q_scaled, k_scaled = graph.op(qk.input[0], "Mul"), graph.op(qk.input[1], "Mul")
    if q_scaled is None or k_scaled is None:
        return None
    q_scale, k_scale = graph.scalar(q_scaled.input[1]), graph.scalar(k_scaled.input[1])
    if q_scale is None or k_scale is None:
        return None
    # The probabilities, through the exporter's NaN guard if it is there.
    probabilities = softmax.output[0]
    guard: list[onnx.NodeProto] = []
    users = graph.consumers.get(probabilities, [])
    isnan = next((u for u in users if u.op_type == "IsNaN"), None)
    if isnan is not None:
        where = graph.only_consumer(isnan.output[0], "Where")
        if where is None or where.input[2] != probabilities or len(users) != 2:
            return None
        guard, probabilities = [isnan, where], where.output[0]
    context = graph.only_consumer(probabilities, "MatMul")
    if context is None or context.input[0] != probabilities:
        return None
    back = graph.only_consumer(context.output[0], "Transpose")
    if back is None or _attribute(back, "perm", None) != [0, 2, 1, 3]:
        return None
    merged = graph.only_consumer(back.output[0], "Reshape")
    if merged is None:
        return None
    q = _heads(graph, q_scaled.input[0])
    v = _heads(graph, context.input[1])
    k_walk = _key_chain(graph, k_scaled.input[0])
    if q is None or v is None or k_walk is None:
        return None
    k = _heads(graph, k_walk[0])
    if k is None:
        return None
    projections = [_linear(graph, q[0]), _linear(graph, k[0]), _linear(graph, v[0])]
    if any(p is None for p in projections):
        return None
    q_lin, k_lin, v_lin = (p for p in projections if p is not None)
    if not (q_lin[0] == k_lin[0] == v_lin[0]) or not (q[1] == k[1] == v[1]):
        return None
    bias = graph.constant(q_lin[2])
    heads = _head_count(q[1], bias.size) if bias is not None and bias.ndim == 1 else None
    if heads is None or bias is None or not _merges_heads(graph, merged, bias.size):
        return None
    # Shapes, the mask bias and the constants these nodes used are left to the pruning in
    # fuse_encoder: whatever else still reads them keeps them.
    removed = [
        *q_lin[3],
        *k_lin[3],
        *v_lin[3],
        *q[2],
        *k[2],
        *v[2],
        *k_walk[1],
        q_scaled,
        k_scaled,
        qk,
        scores,
        softmax,
        *guard,
        context,
        back,
        merged,
    ]
    return _Layer(
        hidden=q_lin[0],
        weights=(q_lin[1], k_lin[1], v_lin[1]),
        biases=(q_lin[2], k_lin[2], v_lin[2]),
        heads=heads,
        scale=q_scale * k_scale,
        output=merged.output[0],
        removed=removed,
    )


def _match_gelu(graph: _Graph, erf: onnx.NodeProto) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """``x · (0.5 · (1 + erf(x / √2)))`` in any operand order → (x, output, nodes)."""
    div = graph.op(erf.input[0], "Div")
    if div is None or not _close(graph.scalar(div.input[1]), math.sqrt(2.0)):
        return None
    x = div.input[0]
    plus = graph.only_consumer(erf.output[0], "Add")
    if plus is None or not _close(graph.scalar(_other(plus, erf.output[0])), 1.0):
        return None
    half = graph.only_consumer(plus.output[0], "Mul")
    if half is None or not _close(graph.scalar(_other(half, plus.output[0])), 0.5):
        return None
    times_x = graph.only_consumer(half.output[0], "Mul")
    if times_x is None or _other(times_x, half.output[0]) != x:
        return None
    if graph.consumers.get(div.output[0], []) != [erf]:
        return None
    return x, times_x.output[0], [div, erf, plus, half, times_x]


def _other(node: onnx.NodeProto, name: str) -> str:
    a, b = node.input[0], node.input[1]
    return b if a == name else a


def _close(value: float | None, expected: float) -> bool:
    return value is not None and math.isclose(value, expected, rel_tol=1e-6)


def _prune_and_sort(graph: onnx.GraphProto, nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Drop nodes whose outputs nothing uses, then order the rest topologically."""
    kept = list(nodes)
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in kept for name in node.input} | outputs
        alive = [node for node in kept if any(out in used for out in node.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered: list[onnx.NodeProto] = []
    pending = kept
    while pending:
        waiting = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError(f"fused graph has unresolved inputs at node {waiting[0].name!r}")
        pending = waiting
    missing = outputs - available
    if missing:
        raise ValueError(f"fused graph no longer computes its output {sorted(missing)[0]!r}")
    return ordered


def fuse_encoder(model: onnx.ModelProto, mask_input: str = "attention_mask") -> FusionReport:
    """Fuse ``model``'s attention layers and GELUs in place; see the module's docstring."""
    graph = _Graph(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if mask_input not in {i.name for i in model.graph.input} or opset < 13:
        # Before opset 13 Softmax flattens its input from ``axis`` (default 1) on.
        return FusionReport(attention=0, gelu=0, layers=0)
    softmaxes = [n for n in graph.nodes if n.op_type == "Softmax"]
    layers = [layer for s in softmaxes if (layer := _match_attention(graph, s, mask_input)) is not None]
    gelus = [g for n in graph.nodes if n.op_type == "Erf" and (g := _match_gelu(graph, n)) is not None]
    if not layers and not gelus:
        return FusionReport(attention=0, gelu=0, layers=len(softmaxes))
    removed = {id(node) for layer in layers for node in layer.removed}
    removed |= {id(node) for gelu in gelus for node in gelu[2]}
    added: list[onnx.NodeProto] = []
    if layers:
        added.append(
            helper.make_node(
                "Cast", [mask_input], [MASK_NAME], to=onnx.TensorProto.INT32, name=f"{MASK_NAME}_cast"
            )
        )
    for index, layer in enumerate(layers):
        prefix = f"hevlayer_fused_attention_{index}"
        added += [
            helper.make_node("Concat", list(layer.weights), [f"{prefix}_w"], axis=1, name=f"{prefix}_w"),
            helper.make_node("Concat", list(layer.biases), [f"{prefix}_b"], axis=0, name=f"{prefix}_b"),
            helper.make_node(
                "Attention",
                [layer.hidden, f"{prefix}_w", f"{prefix}_b", MASK_NAME],
                [layer.output],
                name=prefix,
                domain=MS_DOMAIN,
                num_heads=layer.heads,
                scale=layer.scale,
            ),
        ]
    for index, (x, output, _) in enumerate(gelus):
        name = f"hevlayer_fused_gelu_{index}"
        added.append(helper.make_node("Gelu", [x], [output], name=name, domain=MS_DOMAIN))
    kept = [node for node in graph.nodes if id(node) not in removed]
    try:  # a removed node's output that something kept still reads: leave the model as it is
        ordered = _prune_and_sort(model.graph, kept + added)
    except ValueError:
        return FusionReport(attention=0, gelu=0, layers=len(softmaxes))
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return FusionReport(attention=len(layers), gelu=len(gelus), layers=len(softmaxes))
