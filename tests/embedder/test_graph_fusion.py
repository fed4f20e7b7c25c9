"""The encoder graph rewritten into onnxruntime's fused kernels (hevlayer.triton.graph_fusion)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from hevlayer.triton.graph_fusion import MS_DOMAIN, FusionReport, fuse_encoder
from hevlayer.triton.onnx_model import OnnxEmbedder, RuntimeOptions, minilm_files

Ids = npt.NDArray[np.int64]

TEXTS = [
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog. " * 12,
    "a",
    "Milvus Lite stores vectors in a local file; the gateway writes them after the claimer leases "
    "the document.",
    "import os\n" + "\n".join(f"value_{i} = os.environ.get('V{i}', '{i}')" for i in range(40)),
]


@pytest.fixture(scope="module")
def minilm() -> onnx.ModelProto:
    return onnx.load(str(minilm_files().onnx_path))


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _hidden(session: ort.InferenceSession, ids: Ids, mask: Ids) -> npt.NDArray[np.float32]:
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return np.asarray(session.run(None, feeds)[0])


def _padded_batch() -> tuple[Ids, Ids]:
    rng = np.random.default_rng(7)
    lengths = [5, 64, 17, 128]
    ids = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1000, 30000, size=length)
        ids[row, 0], ids[row, length - 1] = 101, 102
        mask[row, :length] = 1
    return ids, mask


def test_every_attention_layer_and_gelu_of_minilm_is_fused(minilm: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(minilm)
    report = fuse_encoder(model)
    assert report == FusionReport(attention=6, gelu=6, layers=6)
    ops = _ops(model)
    assert ops["Attention"] == 6
    assert ops["Gelu"] == 6
    for gone in ("Softmax", "IsNaN", "Where", "Erf", "Transpose"):
        assert ops[gone] == 0, gone
    assert any(opset.domain == MS_DOMAIN for opset in model.opset_import)
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    attributes = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    assert attributes["num_heads"] == 12
    assert attributes["scale"] == pytest.approx(1 / np.sqrt(32), rel=1e-6)
    # The stored weights are untouched: still the file's int8 initializers.
    assert {i.name for i in model.graph.initializer} >= {
        i.name for i in minilm.graph.initializer if i.data_type == TensorProto.INT8
    }


def test_the_fused_graph_computes_the_same_hidden_states_on_a_padded_batch(minilm: onnx.ModelProto) -> None:
    fused = onnx.ModelProto()
    fused.CopyFrom(minilm)
    fuse_encoder(fused)
    ids, mask = _padded_batch()
    plain_hidden = _hidden(_session(minilm), ids, mask)
    fused_hidden = _hidden(_session(fused), ids, mask)
    real = mask.astype(bool)  # padded positions are not used by pooling; real ones must agree
    assert np.abs(plain_hidden[real] - fused_hidden[real]).max() < 1e-4


def test_the_embedder_gives_the_same_vectors_fused_and_not() -> None:
    padded = RuntimeOptions(max_batch_tokens=4096, sort_by_length=False)  # one run, padded rows
    plain = OnnxEmbedder(minilm_files(), replace(padded, fuse_graph=False))
    fused = OnnxEmbedder(minilm_files(), padded)
    assert plain.fusion is None
    assert fused.fusion == FusionReport(attention=6, gelu=6, layers=6)
    difference = np.abs(plain.embed(TEXTS) - fused.embed(TEXTS)).max()
    assert difference < 1e-5


def test_a_layer_that_does_not_match_is_left_and_the_rest_are_fused(minilm: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(minilm)
    # The first layer's q scale becomes a computed tensor, not a constant: that layer must stay.
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    producer = {out: n for n in model.graph.node for out in n.output}
    q_scaled = producer[producer[producer[softmax.input[0]].input[0]].input[0]]
    assert q_scaled.op_type == "Mul"
    q_scaled.input[1], scale = "computed_scale", q_scaled.input[1]
    model.graph.node.insert(0, helper.make_node("Identity", [scale], ["computed_scale"]))
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    report = fuse_encoder(model)
    assert report == FusionReport(attention=5, gelu=6, layers=6)
    assert _ops(model)["Softmax"] == 1
    ids, mask = _padded_batch()
    real = mask.astype(bool)
    before, after = _hidden(_session(reference), ids, mask), _hidden(_session(model), ids, mask)
    assert np.abs(before[real] - after[real]).max() < 1e-4


def test_a_causal_mask_is_not_fused_into_attention_without_one(minilm: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(minilm)
    # The exporter's mask compares the key position with 0 (always true); compare it with the
    # query position instead and the mask becomes causal, which the fused Attention (no
    # `unidirectional`) would not apply.
    producer = {out: n for n in model.graph.node for out in n.output}
    compare = next(n for n in model.graph.node if n.op_type == "GreaterOrEqual")
    key_positions = producer[compare.input[0]]  # Unsqueeze(positions, [2]): [1, 1, 1, S]
    assert key_positions.op_type == "Unsqueeze"
    assert compare.input[1] not in producer  # the constant 0
    positions = key_positions.input[0]  # Unsqueeze(Range(0, S), [0]): [1, S]
    assert producer[producer[positions].input[0]].op_type == "Range"
    query_positions = next(  # Unsqueeze(positions, [2]): [1, S, 1]
        n
        for n in model.graph.node
        if n.op_type == "Unsqueeze" and n.input[0] == positions and n is not key_positions
    )
    compare.input[1] = query_positions.output[0]
    report = fuse_encoder(model)
    assert report.attention == 0
    assert report.gelu == 6


def test_a_graph_output_read_inside_an_attention_leaves_the_model_as_it_was(minilm: onnx.ModelProto) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(minilm)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(helper.make_tensor_value_info(softmax.input[0], TensorProto.FLOAT, None))
    before = model.SerializeToString()
    report = fuse_encoder(model)
    assert (report.attention, report.gelu) == (0, 0)
    assert model.SerializeToString() == before


def test_a_graph_without_the_pattern_is_unchanged() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["attention_mask_f", "w"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probabilities"], axis=-1),
        ],
        "plain",
        [
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, 4]),
            helper.make_tensor_value_info("attention_mask_f", TensorProto.FLOAT, [1, 4]),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 4])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.25] * 16)],
    )
    model = helper.make_model(graph)
    before = model.SerializeToString()
    assert fuse_encoder(model) == FusionReport(attention=0, gelu=0, layers=1)
    assert model.SerializeToString() == before
    no_mask = helper.make_model(helper.make_graph([], "empty", [], []))
    assert fuse_encoder(no_mask) == FusionReport(attention=0, gelu=0, layers=0)


def test_a_graph_before_opset_13_is_unchanged(minilm: onnx.ModelProto) -> None:
    # Before opset 13 Softmax flattens from `axis` (default 1) on: not the attention's softmax.
    model = onnx.ModelProto()
    model.CopyFrom(minilm)
    next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 12
    before = model.SerializeToString()
    assert fuse_encoder(model) == FusionReport(attention=0, gelu=0, layers=0)
    assert model.SerializeToString() == before
