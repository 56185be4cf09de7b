"""elma export: the ONNX chain reproduces every exit, the fused graph agrees, ALBERT stores its layer once,
the manifest says what the bundle holds, and a failed export leaves nothing behind."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from elma.errors import ExportError  # noqa: E402
from elma.export import bundle_writer  # noqa: E402
from elma.export.bundle_writer import export_bundle  # noqa: E402
from elma.export.specs import ExportConfig  # noqa: E402
from elma.export.verify import cpu_session  # noqa: E402
from elma.export.weights import weight_bytes  # noqa: E402
from elma.model.multi_exit import MultiExitQA  # noqa: E402
from elma.runtime.bundle import Backbone, load_bundle  # noqa: E402

ALBERT4 = {"num_hidden_layers": 4}  # ALBERT-style: 4 slots, one shared group


def inputs(batch=3, seq=20, seed=5):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 1000, (batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[-1, seq - 6:] = 0
    ids[-1, seq - 6:] = 0
    types = np.zeros_like(ids)
    types[:, seq // 2:] = 1
    return ids, mask, types


def onnx_chain(bundle, ids, mask, types):
    """Every exit's logits through ONNX Runtime: embeddings -> slot graph -> exit head, slot by slot."""
    sessions = {}

    def run(path, feeds):
        if path not in sessions:
            sessions[path] = cpu_session(path)
        return sessions[path].run(None, feeds)

    hidden = run(bundle.embeddings, {"input_ids": ids, "token_type_ids": types})[0]
    starts, ends = [], []
    for layer, head in zip(bundle.layers, bundle.exits):
        hidden = run(layer, {"hidden_states": hidden, "attention_mask": mask})[0]
        start, end = run(head, {"hidden_states": hidden, "attention_mask": mask})
        starts.append(start)
        ends.append(end)
    return np.stack(starts), np.stack(ends)


def torch_logits(model_dir, ids, mask, types):
    model = MultiExitQA.from_pretrained(model_dir)
    with torch.no_grad():
        start, end = model(*(torch.from_numpy(a.astype(np.int64)) for a in (ids, mask, types)))
    return start.numpy(), end.numpy()


@pytest.mark.parametrize("name, overrides", [("bert", {}), ("albert", ALBERT4)])
def test_onnx_chain_reproduces_every_exit(tiny_bundles, name, overrides):
    bundle = load_bundle(tiny_bundles.bundle(name, **overrides))
    ids, mask, types = inputs()
    start, end = onnx_chain(bundle, ids, mask, types)
    want_start, want_end = torch_logits(tiny_bundles.model(name, **overrides), ids, mask, types)
    assert start.shape == want_start.shape == (bundle.num_layers, 3, 20)
    assert np.abs(start - want_start).max() <= 1e-4 and np.abs(end - want_end).max() <= 1e-4
    assert np.abs(want_start[:, 0]).max() > 0.5, "logits are O(1), so 1e-4 is a real bound"


@pytest.mark.parametrize("name, overrides", [("bert", {}), ("albert", ALBERT4)])
def test_fused_graph_agrees_with_the_chain(tiny_bundles, name, overrides):
    bundle = load_bundle(tiny_bundles.bundle(name, **overrides))
    ids, mask, types = inputs(batch=2, seq=64)  # the longest window
    start, end = cpu_session(bundle.fused).run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    chain_start, chain_end = onnx_chain(bundle, ids, mask, types)
    assert np.abs(start - chain_start[-1]).max() <= 1e-4 and np.abs(end - chain_end[-1]).max() <= 1e-4


def test_albert_stores_its_shared_layer_once(tiny_bundles):
    albert = load_bundle(tiny_bundles.bundle("albert", **ALBERT4))
    assert len(set(albert.layers)) == 1 and albert.layers[0].name == "group0.onnx"
    assert sorted(p.name for p in albert.root.glob("group*.onnx")) == ["group0.onnx"]
    # The BERT-shaped equivalent: the same layer dimensions, one weight set per layer.
    cfg = json.loads((tiny_bundles.model("albert", **ALBERT4) / "config.json").read_text())
    same = {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "hidden_act")}
    bert = load_bundle(tiny_bundles.bundle("bert", num_hidden_layers=4, **same))
    assert len(set(bert.layers)) == 4
    albert_bytes = sum(weight_bytes(p) for p in set(albert.layers))
    bert_bytes = sum(weight_bytes(p) for p in set(bert.layers))
    assert albert_bytes / bert_bytes == pytest.approx(1 / 4, rel=0.05), (albert_bytes, bert_bytes)


def test_albert_groups_map_to_slots(tiny_bundles):
    bundle = load_bundle(tiny_bundles.bundle("albert", num_hidden_layers=4, num_hidden_groups=2))
    assert [p.name for p in bundle.layers] == ["group0.onnx", "group0.onnx", "group1.onnx", "group1.onnx"]
    ids, mask, types = inputs()
    start, _ = onnx_chain(bundle, ids, mask, types)
    want, _ = torch_logits(tiny_bundles.model("albert", num_hidden_layers=4, num_hidden_groups=2), ids, mask, types)
    assert np.abs(start - want).max() <= 1e-4


def test_manifest_describes_the_bundle(tiny_bundles):
    root = tiny_bundles.bundle("bert")
    manifest = json.loads((root / "manifest.json").read_text())
    model_cfg = json.loads((tiny_bundles.model("bert") / "config.json").read_text())
    bundle = load_bundle(root, expected_backbone=Backbone.from_config(model_cfg))
    assert manifest["format_version"] == 1 and manifest["precision"] == "fp32" and manifest["opset"] == 17
    assert manifest["num_layers"] == 3 and manifest["hidden_size"] == 32 and manifest["max_seq_length"] == 64
    assert manifest["layers"] == ["group0.onnx", "group1.onnx", "group2.onnx"]
    assert manifest["exits"] == ["exit0.onnx", "exit1.onnx", "exit2.onnx"]
    assert bundle.null_thresholds == tuple(model_cfg["elma"]["null_thresholds"])
    assert manifest["windows"] == {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16}
    assert manifest["io"]["group"]["inputs"] == [{"name": "hidden_states", "dtype": "float32", "shape": ["batch", "seq", 32]},
                                                 {"name": "attention_mask", "dtype": "int32", "shape": ["batch", "seq"]}]
    on_disk = {p.name for p in root.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk, "every file has a checksum, and nothing else is there"
    assert all(len(r["sha256"]) == 64 and r["size_bytes"] > 0 for r in manifest["files"].values())
    assert (root / "tokenizer.json").read_bytes() == (tiny_bundles.model("bert") / "tokenizer.json").read_bytes()
    assert not list(root.parent.glob(f".{root.name}*")), "no temporary folder left beside the bundle"


def test_weights_are_stored_once_for_chain_and_fused_graph(tiny_bundles):
    bundle = load_bundle(tiny_bundles.bundle("bert"))
    chain = weight_bytes(bundle.embeddings) + sum(weight_bytes(p) for p in bundle.layers + bundle.exits)
    fused = weight_bytes(bundle.fused)
    stored = (bundle.root / "weights.bin").stat().st_size
    assert fused > 0.95 * chain, "the fused graph uses the same weights"
    assert stored < 1.05 * chain, "but they are stored once"


def test_failed_check_leaves_nothing_behind(tiny_bundles, tmp_path, monkeypatch):
    def broken(path, *args, **kwargs):
        raise ExportError(f"{path.name}: output start_logits differs from the PyTorch step by 1 (limit 1e-4)")

    monkeypatch.setattr(bundle_writer, "check_graph", broken)
    with pytest.raises(ExportError, match="differs"):
        export_bundle(tiny_bundles.model("bert"), tmp_path / "b")
    assert list(tmp_path.iterdir()) == [], "neither the bundle nor a temporary folder"


def test_existing_bundle_is_replaced_only_on_request(tiny_bundles, tmp_path):
    target = tmp_path / "b"
    shutil.copytree(tiny_bundles.bundle("bert"), target)
    with pytest.raises(ExportError, match="--overwrite"):
        export_bundle(tiny_bundles.model("albert", **ALBERT4), target)
    export_bundle(tiny_bundles.model("albert", **ALBERT4), target, ExportConfig(overwrite=True))
    assert load_bundle(target, expected_backbone="albert").num_layers == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a bundle"):
        export_bundle(tiny_bundles.model("bert"), other, ExportConfig(overwrite=True))
    assert (other / "todo.txt").read_text() == "mine"


def test_max_seq_length_is_checked(tiny_bundles, tmp_path):
    with pytest.raises(ExportError, match="max_position_embeddings = 128"):
        export_bundle(tiny_bundles.model("bert"), tmp_path / "b", ExportConfig(max_seq_length=512))
    with pytest.raises(ExportError, match="does not fit the model's windows"):
        export_bundle(tiny_bundles.model("bert"), tmp_path / "b", ExportConfig(max_seq_length=24))
    assert not (tmp_path / "b").exists()
