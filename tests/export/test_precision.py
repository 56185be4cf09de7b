"""fp16 and int8 bundles: they load, run in ONNX Runtime on CPU, stay close to fp32, keep normalisation and
softmax in fp32 (fp16), and quantise only the encoder's MatMul weights (int8)."""

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from test_bundle_writer import inputs, onnx_chain, torch_logits  # noqa: E402

from elma.export.verify import cpu_session  # noqa: E402
from elma.runtime.bundle import load_bundle  # noqa: E402

# Loose on purpose: these catch a broken conversion (errors of O(1)); answer agreement is measured on real data.
CLOSE = {"fp16": 2e-2, "int8": 0.15}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("name", ["bert", "albert"])
def test_reduced_precision_bundles_stay_close_to_fp32(tiny_bundles, name, precision):
    bundle = load_bundle(tiny_bundles.bundle(name, precision))
    assert bundle.precision == precision
    ids, mask, types = inputs()
    start, end = onnx_chain(bundle, ids, mask, types)
    assert start.dtype == np.float32, "graph outputs stay float32 at every precision"
    want_start, want_end = torch_logits(tiny_bundles.model(name), ids, mask, types)
    scale = np.abs(want_start[:, :2]).max()
    assert np.abs(start - want_start).max() <= CLOSE[precision] * max(1.0, scale)
    assert np.abs(end - want_end).max() <= CLOSE[precision] * max(1.0, scale)
    fused_start, _ = cpu_session(bundle.fused).run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    assert np.abs(fused_start - want_start[-1]).max() <= CLOSE[precision] * max(1.0, scale)


def test_fp16_keeps_normalisation_and_softmax_in_fp32(tiny_bundles):
    bundle = load_bundle(tiny_bundles.bundle("bert", "fp16"))
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(bundle.layers[0]), load_external_data=False)).graph
    weights = {t.name: t.data_type for t in graph.initializer}
    types = dict(weights)
    types.update({v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)})
    pinned = [n for n in graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert {n.op_type for n in pinned} == {"LayerNormalization", "Softmax"}
    for node in pinned:
        assert all(types[i] == onnx.TensorProto.FLOAT for i in node.input if i), node.name
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    assert len(matmuls) == 6, "q, k, v, attention output, ffn in, ffn out"
    assert all(weights[i] == onnx.TensorProto.FLOAT16 for n in matmuls for i in n.input if i in weights)
    fp32 = (tiny_bundles.bundle("bert", "fp32") / "weights.bin").stat().st_size
    fp16 = (bundle.root / "weights.bin").stat().st_size
    assert 0.45 < fp16 / fp32 < 0.56, "weights stored in half precision"


def test_int8_quantises_the_encoder_matmuls_only(tiny_bundles):
    bundle = load_bundle(tiny_bundles.bundle("bert", "int8"))

    def ops(path):
        return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}

    assert "MatMulInteger" in ops(bundle.layers[0]) and "MatMulInteger" in ops(bundle.fused)
    assert "MatMulInteger" not in ops(bundle.exits[0]) and "MatMulInteger" not in ops(bundle.embeddings)


def test_int8_keeps_the_feed_forward_output_fp32_unless_told(tiny_bundles, tmp_path):
    from elma.export.precision import to_int8

    def weight_matmuls(path):
        graph = onnx.load(str(path)).graph
        weights = {t.name for t in graph.initializer}
        return {n.name: n.op_type for n in graph.node
                if n.op_type in ("MatMul", "MatMulInteger") and any(i in weights for i in n.input)}

    shipped = weight_matmuls(load_bundle(tiny_bundles.bundle("bert", "int8")).layers[0])
    assert sorted(shipped.values()).count("MatMulInteger") == 5
    assert [name for name, op in shipped.items() if op == "MatMul"] == ["/layer/output/dense/MatMul"]

    src = load_bundle(tiny_bundles.bundle("bert", "fp32")).layers[0]
    to_int8(src, tmp_path / "all.onnx", keep_fp32=())
    assert sorted(weight_matmuls(tmp_path / "all.onnx").values()) == ["MatMulInteger"] * 6
    to_int8(src, tmp_path / "attention.onnx", keep_fp32=("intermediate", r"(?<!attention)/output/"))
    assert sorted(weight_matmuls(tmp_path / "attention.onnx").values()) == ["MatMul"] * 2 + ["MatMulInteger"] * 4


def test_export_refuses_a_bad_int8_pattern():
    from elma.export.specs import ExportConfig

    with pytest.raises(ValueError, match="not a regular expression"):
        ExportConfig(precision="int8", int8_keep_fp32=("(unclosed",))
