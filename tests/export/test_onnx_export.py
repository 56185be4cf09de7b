"""Export specs as data, the opset choice (13 for older TensorRT), the dynamo exporter, and `elma export`."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from test_bundle_writer import inputs, onnx_chain, torch_logits  # noqa: E402

from elma.cli import main  # noqa: E402
from elma.export.bundle_writer import export_bundle  # noqa: E402
from elma.export.specs import EXIT_SPEC, FUSED_SPEC, GROUP_SPEC, ExportConfig  # noqa: E402
from elma.runtime.bundle import load_bundle  # noqa: E402


def test_specs_are_data():
    assert GROUP_SPEC.input_names == ("hidden_states", "attention_mask") and GROUP_SPEC.output_names == ("layer_output",)
    assert EXIT_SPEC.output_names == ("start_logits", "end_logits")
    assert FUSED_SPEC.input_names == ("input_ids", "attention_mask", "token_type_ids"), "MultiExitQA.forward's order"
    assert GROUP_SPEC.dynamic_axes()["hidden_states"] == {0: "batch", 1: "seq"}
    assert GROUP_SPEC.tolerances["fp32"].limit(10.0) == pytest.approx(1e-4 + 1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "bf16"}, "precision must be one of fp32, fp16, int8"),
    ({"opset": 11}, "opset must be in 13..20"),
    ({"exporter": "onnxscript"}, "exporter must be one of"),
    ({"max_seq_length": 4}, "at least 8"),
])
def test_bad_export_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExportConfig(**kwargs)


def graph_ops(path):
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_opset_13_decomposes_layernorm_for_older_tensorrt(tiny_bundles, tmp_path):
    export_bundle(tiny_bundles.model("bert"), tmp_path / "b13", ExportConfig(opset=13, threads=1))
    bundle = load_bundle(tmp_path / "b13")
    assert bundle.opset == 13 and "LayerNormalization" not in graph_ops(bundle.layers[0])
    assert "LayerNormalization" in graph_ops(load_bundle(tiny_bundles.bundle("bert")).layers[0]), "opset 17: native"
    ids, mask, types = inputs()
    start, _ = onnx_chain(bundle, ids, mask, types)
    want, _ = torch_logits(tiny_bundles.model("bert"), ids, mask, types)
    assert np.abs(start - want).max() <= 1e-4


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_bundle(tiny_bundles, tmp_path):
    export_bundle(tiny_bundles.model("albert"), tmp_path / "dyn", ExportConfig(exporter="dynamo", threads=1))
    bundle = load_bundle(tmp_path / "dyn")
    assert json.loads((tmp_path / "dyn" / "manifest.json").read_text())["created_by"]["exporter"] == "dynamo"
    ids, mask, types = inputs()
    start, end = onnx_chain(bundle, ids, mask, types)
    want_start, want_end = torch_logits(tiny_bundles.model("albert"), ids, mask, types)
    assert np.abs(start - want_start).max() <= 1e-4 and np.abs(end - want_end).max() <= 1e-4


def test_elma_export_command(tiny_bundles, tmp_path, capsys):
    model = tiny_bundles.model("bert")
    out = tmp_path / "b"
    assert main(["export", str(model), "-o", str(out), "--precision", "fp16", "--max-seq-length", "48", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"bundle {out} (fp16): 11 files") and "largest |onnxruntime - pytorch|" in printed
    bundle = load_bundle(out)
    assert bundle.precision == "fp16" and bundle.max_seq_length == 48
    assert main(["export", str(model), "-o", str(out)]) == 2, "an existing bundle needs --overwrite"
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "c")]) == 3
    assert "no such model folder" in capsys.readouterr().err
    shutil.rmtree(out)


def test_missing_export_dependencies_say_what_to_install(tiny_bundles, tmp_path, monkeypatch):
    import sys

    from elma.errors import ExportError

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportError, match=r"exporting needs onnx: pip install 'elma\[export\]'"):
        export_bundle(tiny_bundles.model("bert"), tmp_path / "b")
    assert not (tmp_path / "b").exists()
