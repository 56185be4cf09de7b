"""load_bundle: a bundle loads verified or not at all; every altered byte, missing or truncated file, unknown
format version and other backbone is refused with an error naming the file."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elma.errors import BundleError
from elma.runtime.bundle import MANIFEST_NAME, Backbone, load_bundle, update_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tiny_bundles, tmp_path):
    """A private copy of the tiny BERT bundle, free to damage."""
    return Path(shutil.copytree(tiny_bundles.bundle("bert"), tmp_path / "bundle"))


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_good_bundle_loads_with_absolute_paths(bundle):
    b = load_bundle(bundle, expected_backbone="bert")
    assert b.root == bundle.resolve() and b.num_layers == 3 and b.precision == "fp32"
    assert all(p.is_absolute() and p.is_file() for p in (b.embeddings, b.fused, b.tokenizer, *b.layers, *b.exits))
    assert b.engines is None


def test_every_file_is_checked_byte_by_byte(bundle):
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    assert len(manifest["files"]) == 10
    for name, record in sorted(manifest["files"].items()):
        size = record["size_bytes"]
        for offset in sorted({0, size // 3, size // 2, size - 1}):
            flip(bundle / name, offset)
            with pytest.raises(BundleError, match=f"{name}: sha256 differs"):
                load_bundle(bundle)
            flip(bundle / name, offset)  # restore
    load_bundle(bundle)


def test_every_byte_of_the_manifest_is_checked(bundle):
    path = bundle / MANIFEST_NAME
    original = path.read_bytes()
    uncaught, unnamed = [], []
    with open(path, "r+b") as f:
        for offset in range(len(original)):
            f.seek(offset)
            f.write(bytes([original[offset] ^ 0x01]))
            f.flush()
            try:
                load_bundle(bundle, verify_checksums=False)
                uncaught.append(offset)
            except BundleError as err:
                if MANIFEST_NAME not in str(err):
                    unnamed.append((offset, str(err)))
            f.seek(offset)
            f.write(original[offset:offset + 1])
    assert not uncaught, f"flipping these bytes went unnoticed: {uncaught[:10]}"
    assert not unnamed, unnamed[:3]
    load_bundle(bundle)


def test_missing_and_truncated_files_are_named(bundle):
    data = (bundle / "weights.bin").read_bytes()
    (bundle / "weights.bin").write_bytes(data[:-10])
    with pytest.raises(BundleError, match=r"weights.bin: \d+ bytes, the manifest says"):
        load_bundle(bundle, verify_checksums=False)
    (bundle / "weights.bin").write_bytes(data)
    (bundle / "exit1.onnx").unlink()
    with pytest.raises(BundleError, match="exit1.onnx: missing from the bundle"):
        load_bundle(bundle)
    (bundle / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(bundle / "nowhere")


def rewrite_manifest(bundle: Path, **changes) -> None:
    from elma.runtime.bundle import write_manifest

    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest.update(changes)
    write_manifest(bundle, manifest)


def test_format_versions_other_than_ours_are_refused(bundle):
    rewrite_manifest(bundle, format_version=2)
    with pytest.raises(BundleError, match="format version 2.*newer ELMA"):
        load_bundle(bundle)
    rewrite_manifest(bundle, format_version=0)
    with pytest.raises(BundleError, match="format version 0.*re-export"):
        load_bundle(bundle)


def test_a_bundle_of_another_backbone_is_refused(bundle, tiny_bundles):
    with pytest.raises(BundleError, match="a bert bundle, albert was expected"):
        load_bundle(bundle, expected_backbone="albert")
    albert_cfg = json.loads((tiny_bundles.model("albert") / "config.json").read_text())
    with pytest.raises(BundleError, match="backbone bert .* differs from the expected albert"):
        load_bundle(bundle, expected_backbone=Backbone.from_config(albert_cfg))
    bert_cfg = json.loads((tiny_bundles.model("bert") / "config.json").read_text())
    assert load_bundle(bundle, expected_backbone=Backbone.from_config(bert_cfg)).backbone.model_type == "bert"


def test_manifest_may_only_name_checked_plain_files(bundle):
    rewrite_manifest(bundle, fused="../../etc/passwd")
    with pytest.raises(BundleError, match="no checksum"):
        load_bundle(bundle)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    files = dict(manifest["files"])
    files["../outside.onnx"] = files.pop("fused.onnx")
    rewrite_manifest(bundle, files=files, fused="fused.onnx")
    with pytest.raises(BundleError, match="not a plain name"):
        load_bundle(bundle)


def test_update_manifest_records_new_files(bundle):
    (bundle / "notes.bin").write_bytes(b"x" * 10)
    update_manifest(bundle, {"exit_thresholds": {"entropy": [0.4, 0.4]}}, new_files=["notes.bin"])
    b = load_bundle(bundle)
    assert b.manifest["exit_thresholds"] == {"entropy": [0.4, 0.4]}
    assert b.manifest["files"]["notes.bin"]["size_bytes"] == 10
    (bundle / "notes.bin").write_bytes(b"y" * 10)
    with pytest.raises(BundleError, match="notes.bin: sha256 differs"):
        load_bundle(bundle)


def test_loader_needs_neither_torch_nor_onnx(bundle):
    code = ("import sys; sys.modules.update({m: None for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'tensorrt')})\n"
            "from elma.runtime.bundle import load_bundle; from elma.runtime import trt_compat\n"
            f"print(load_bundle({str(bundle)!r}).num_layers)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
