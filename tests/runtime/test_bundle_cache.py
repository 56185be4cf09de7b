"""The cached ONNX bundle of a model folder: elma-ask's second call does not import torch, a changed model
re-exports (a re-calibrated one does not), a killed or half-written entry is never used, and without the export
extra elma-ask answers with torch after a one-line note."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import PASSAGES, make_tiny_model_dir  # noqa: E402

from elma.runtime.bundle_cache import ensure_bundle, model_fingerprint, open_cached  # noqa: E402
from elma.runtime.defaults import SOURCE_CALIBRATED, write_default_policy  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONTEXT, QAS = PASSAGES[0]
QUESTION = QAS[0][0]


@pytest.fixture
def folder(tiny_bundles, tmp_path):
    return shutil.copytree(tiny_bundles.model("bert"), tmp_path / "model")


def python(code: str, *argv, cache: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ELMA_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=str(ROOT), env=env, capture_output=True,
                          text=True, timeout=300, **kw)


ASK = ("import sys\n"
       "from elma.ask_cli import main\n"
       "rc = main(sys.argv[1:])\n"
       "print('imported:', ' '.join(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)\n"
       "sys.exit(rc)\n")


def test_the_second_call_loads_the_cached_bundle_without_importing_torch(folder, tmp_path):
    write_default_policy(folder, "static:2")
    argv = [QUESTION, "--model", folder, "--context", CONTEXT, "--json"]
    notes = []
    assert ensure_bundle(folder, tmp_path / "cache/bundles", notify=notes.append).exported_s is not None
    assert len(notes) == 1 and notes[0].startswith("first use of"), "the first call says why it takes long"
    second = python(ASK, *argv, cache=tmp_path / "cache")
    assert second.returncode == 0, second.stderr
    assert second.stderr.strip() == "imported:", "a cached bundle is answered without torch and without a note"
    got = json.loads(second.stdout)
    assert got["backend"].startswith("onnxruntime") and "cached bundle" in got["backend"]
    assert (got["policy"], got["policy_source"], got["exit_layer"]) == ("static:2", SOURCE_CALIBRATED, 2)
    with Runtime.open(folder) as rt:  # torch, the reference
        want = rt.ask(QUESTION, CONTEXT)
    assert (got["text"], got["char_start"]) == (want.text, want.char_start)
    assert got["score"] == pytest.approx(want.score, abs=1e-3)


def test_a_changed_model_re_exports_a_recalibrated_one_does_not(folder, tmp_path):
    root = tmp_path / "bundles"
    first = ensure_bundle(folder, root)
    assert first.exported_s is not None and (first.path / "manifest.json").is_file()
    again = ensure_bundle(folder, root)
    assert again.path == first.path and again.exported_s is None
    write_default_policy(folder, "static:1")
    assert ensure_bundle(folder, root).exported_s is None, "the default policy is not part of the bundle"
    with open_cached(folder, root=root) as rt:
        assert (rt.policy.spec, rt.policy_source) == ("static:1", SOURCE_CALIBRATED), "read from the folder, not the copy"
        assert rt.ask(QUESTION, CONTEXT).exit_layer == 1
    other = make_tiny_model_dir(tmp_path / "other", "bert", seed=1)
    shutil.copyfile(other / "model.safetensors", folder / "model.safetensors")
    changed = ensure_bundle(folder, root)
    assert changed.fingerprint != first.fingerprint and changed.exported_s is not None
    assert not first.path.exists() and not (root / f"{first.fingerprint}.json").exists(), "the old entry is pruned"
    with open_cached(folder, root=root) as rt, Runtime.open(folder, backend="torch") as ref:
        assert rt.policy.spec == "none", "the default of the old weights no longer holds"
        assert rt.ask(QUESTION, CONTEXT).score == pytest.approx(ref.ask(QUESTION, CONTEXT).score, abs=1e-3)


@pytest.mark.slow  # a subprocess importing torch: about 30 s on a busy 2-core machine
def test_a_killed_export_is_never_used(folder, tmp_path):
    root = tmp_path / "bundles"
    fingerprint = model_fingerprint(folder)
    code = ("import sys\nfrom pathlib import Path\nfrom elma.runtime.bundle_cache import ensure_bundle\n"
            "ensure_bundle(Path(sys.argv[1]), Path(sys.argv[2]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(root)], cwd=str(ROOT), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(root.glob(f".{fingerprint}.export-*")):
            assert proc.poll() is None, "the export ended before it could be killed"
            assert time.monotonic() < deadline, "no export started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert list(root.glob(f".{fingerprint}.export-*")), "the killed export left its temporary folder"
    assert not (root / fingerprint).exists(), "a killed export publishes nothing"
    notes = []
    cached = ensure_bundle(folder, root, notify=notes.append)
    assert cached.exported_s is not None and len(notes) == 1, "exported again, and said so"
    assert not list(root.glob(f".{fingerprint}.*-*")), "the leftovers are removed"
    with open_cached(folder, root=root) as rt:
        assert rt.ask(QUESTION, CONTEXT).exit_layer == 3


def test_a_half_written_or_damaged_entry_is_exported_again(folder, tmp_path):
    root = tmp_path / "bundles"
    fingerprint = model_fingerprint(folder)
    entry = root / fingerprint
    entry.mkdir(parents=True)
    (entry / "embeddings.onnx").write_bytes(b"half")  # a folder without its manifest
    killed = root / f".{fingerprint}.export-x1y2"  # what a killed export leaves (the slow test kills a real one)
    killed.mkdir()
    (killed / "manifest.json").write_text("{}")
    assert ensure_bundle(folder, root).exported_s is not None
    assert (entry / "manifest.json").is_file() and (entry / "embeddings.onnx").stat().st_size > 4
    assert not killed.exists(), "the leftover of a killed export is removed"
    with open(entry / "weights.bin", "r+b") as f:  # truncated after publication (disk full, a bad copy)
        f.truncate(100)
    notes = []
    with open_cached(folder, root=root, notify=notes.append) as rt:
        assert rt.ask(QUESTION, CONTEXT).exit_layer == 3
    assert any("cannot be used" in n for n in notes) and (entry / "weights.bin").stat().st_size > 100


def test_without_the_export_extra_elma_ask_falls_back_to_torch_with_one_note(folder, tmp_path):
    block = "import sys; sys.modules['onnx'] = None\n"
    argv = [QUESTION, "--model", folder, "--context", CONTEXT]
    proc = python(block + ASK, *argv, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if not line.startswith("imported:")]
    assert len(notes) == 1 and notes[0].startswith("elma-ask: note: answering with torch") and "elma[export]" in notes[0]
    assert "backend torch" in proc.stdout and "policy none (no calibrated default)" in proc.stdout
    assert not list((tmp_path / "cache").glob("bundles/*/manifest.json")), "nothing is cached"
    proc = python(block + ASK, *argv, "--backend", "onnxruntime", cache=tmp_path / "cache")
    assert proc.returncode == 3 and "elma[export]" in proc.stderr and "Traceback" not in proc.stderr


def test_a_cache_that_cannot_be_written_is_an_export_error(folder, tmp_path):
    from elma.errors import ExportError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="set ELMA_CACHE_DIR"):
        ensure_bundle(folder, blocker / "bundles")  # elma-ask then answers with torch, after a note
