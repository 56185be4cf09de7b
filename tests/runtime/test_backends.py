"""Backends: ONNX Runtime sessions set up for a chain of short runs (no spinning, one session per distinct file),
provider choice, and one runtime shared by threads answering as it does sequentially."""

import threading

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from conftest import PASSAGES  # noqa: E402

from elma.runtime.backends import OrtBackend, OrtOptions, choose_providers, session_options, shared_cpu_arena  # noqa: E402
from elma.runtime.bundle import load_bundle  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402

QUESTIONS = [(q, c) for c, qas in PASSAGES for q, _ in qas]


def test_albert_loads_its_shared_layer_file_once(tiny_bundles):
    bundle = load_bundle(tiny_bundles.bundle("albert", num_hidden_layers=4))
    with OrtBackend(bundle) as backend:
        assert backend.session_count == 1 + 1 + 4, "embeddings, one shared group, four exits"
        assert len({id(s) for s in backend._layers}) == 1


def test_sessions_do_not_spin(tiny_bundles):
    so = session_options(ort, OrtOptions(intra_op_threads=2))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert session_options(ort, OrtOptions(allow_spinning=True)).get_session_config_entry(
        "session.intra_op.allow_spinning") == "1"
    with pytest.raises(ValueError, match="inter_op_threads"):
        OrtOptions(inter_op_threads=0)


def test_sessions_share_one_cpu_arena_unless_told_not_to(tiny_bundles):
    assert shared_cpu_arena(ort) and shared_cpu_arena(ort), "registered once, then reused (a second register fails)"
    assert session_options(ort, OrtOptions()).get_session_config_entry("session.use_env_allocators") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ORT's default: the session's own arena
        session_options(ort, OrtOptions(shared_arena=False)).get_session_config_entry("session.use_env_allocators")
    bundle = load_bundle(tiny_bundles.bundle("bert"))
    ids = np.full((2, 9), 7, np.int32)
    ids[1, 6:] = 0
    mask = (ids != 0).astype(np.int32)
    outputs = []
    for options in (OrtOptions(shared_arena=False), OrtOptions(), OrtOptions()):  # two backends on one arena
        with OrtBackend(bundle, options) as backend:
            hidden = backend.embed(ids, np.zeros_like(ids))
            for slot in range(backend.num_layers):
                hidden = backend.run_layer(slot, hidden, mask)
            outputs.append((*backend.run_exit(backend.num_layers - 1, hidden, mask), *backend.run_fused(ids, mask, ids * 0)))
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            np.testing.assert_array_equal(a, b)


def test_the_shared_arena_grows_by_one_strategy_per_process_and_says_so_when_asked_another(caplog):
    assert shared_cpu_arena(ort) and shared_cpu_arena(ort, "power_of_two")  # what every runtime asks by default
    with caplog.at_level("WARNING", logger="elma.runtime.backends"):
        assert shared_cpu_arena(ort, "same_as_requested"), "still shared: the first runtime's arena"
    assert "grows power_of_two, not same_as_requested" in caplog.text
    with pytest.raises(ValueError, match="arena_extend"):
        OrtOptions(arena_extend="doubling")


def test_memory_pattern_is_off_unless_asked_and_changes_no_output(tiny_bundles):
    """ORT's memory pattern keeps a pattern per input shape and fragments the arena when the window length changes
    per question (memory kept growing over a long run): off by default, in every session of the backend."""
    assert session_options(ort, OrtOptions()).enable_mem_pattern is False
    assert session_options(ort, OrtOptions(mem_pattern=True)).enable_mem_pattern is True
    bundle = load_bundle(tiny_bundles.bundle("bert"))
    outputs = {}
    for pattern in (False, True):
        with OrtBackend(bundle, OrtOptions(mem_pattern=pattern)) as backend:
            backend.run_fused(*(np.ones((1, 4), np.int32),) * 3)  # loads the fused session
            sessions = [*backend._sessions.values(), backend._fused]
            assert {s.get_session_options().enable_mem_pattern for s in sessions} == {pattern}
            outs = []
            for width in (5, 9, 7, 9, 3):  # a different length per run, as questions come
                ids = np.full((1, width), 7, np.int32)
                mask = np.ones_like(ids)
                hidden = backend.embed(ids, np.zeros_like(ids))
                for slot in range(backend.num_layers):
                    hidden = backend.run_layer(slot, hidden, mask)
                outs += [*backend.run_exit(backend.num_layers - 1, hidden, mask), *backend.run_fused(ids, mask, ids * 0)]
            outputs[pattern] = outs
    for a, b in zip(outputs[False], outputs[True]):
        np.testing.assert_array_equal(a, b)


def test_provider_choice():
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="no CUDAExecutionProvider"):
        choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"])


def test_steps_have_the_documented_shapes(tiny_bundles):
    with OrtBackend(load_bundle(tiny_bundles.bundle("bert")), OrtOptions(intra_op_threads=1)) as backend:
        ids = np.full((2, 9), 7, np.int32)
        hidden = backend.embed(ids, np.zeros_like(ids))
        assert hidden.shape == (2, 9, 32) and hidden.dtype == np.float32
        hidden = backend.run_layer(0, hidden, np.ones_like(ids))
        start, end = backend.run_exit(0, hidden, np.ones_like(ids))
        assert start.shape == end.shape == (2, 9)
        assert backend.select_rows(hidden, [1], 5).shape == (1, 5, 32)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_one_runtime_shared_by_threads_answers_as_sequentially(tiny_bundles, backend):
    path = tiny_bundles.bundle("bert") if backend == "onnxruntime" else tiny_bundles.model("bert")
    policies = ["none", "static:1", "entropy:3,3", "patience:1"]
    with Runtime.open(path, backend=backend) as rt:
        want = {(i, p): rt.ask(q, c, policy=p) for i, (q, c) in enumerate(QUESTIONS) for p in policies}
        got, errors = {}, []

        def worker(offset):
            try:
                for n in range(len(want)):
                    key = list(want)[(n + offset) % len(want)]
                    got[(key, offset)] = rt.ask(*QUESTIONS[key[0]], policy=key[1])
            except Exception as err:  # pragma: no cover - reported below
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(k * 5,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(got) == 4 * len(want)
    for (key, _), a in got.items():
        b = want[key]
        assert (a.text, a.char_start, a.exit_layer, a.no_answer, a.unsolved) == (b.text, b.char_start, b.exit_layer,
                                                                                 b.no_answer, b.unsolved)
        assert a.score == pytest.approx(b.score, abs=1e-4)


def test_device_side_modules_import_without_torch_onnxruntime_or_tensorrt():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys\n"
            "for name in ('torch', 'transformers', 'onnxruntime', 'tensorrt', 'pycuda', 'cuda', 'scipy'):\n"
            "    sys.modules[name] = None\n"
            "import elma.runtime.engine, elma.runtime.backends, elma.runtime.trt_backend, elma.runtime.calibrate\n"
            "import elma.runtime.certify, elma.runtime.risk\n"
            "import elma.ask_cli\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_an_unusable_calibrated_default_is_a_bundle_error(tiny_bundles, tmp_path):
    import shutil

    from elma.errors import BundleError
    from elma.runtime.bundle import update_manifest

    bundle = shutil.copytree(tiny_bundles.bundle("bert"), tmp_path / "b")
    update_manifest(bundle, {"exit_thresholds": {"default": "static:9"}})
    with pytest.raises(BundleError, match="run `elma calibrate` again"):
        Runtime.open(bundle)
    with Runtime.open(bundle, policy="static:2") as rt:
        assert rt.ask(*QUESTIONS[0]).exit_layer == 2


def test_tensorrt_execution_provider_caches_its_engines(tmp_path):
    from elma.runtime.backends import provider_entries

    entries = provider_entries(["TensorrtExecutionProvider", "CPUExecutionProvider"],
                               OrtOptions(trt_cache_dir=str(tmp_path)), "abc")
    name, opts = entries[0]
    assert name == "TensorrtExecutionProvider" and entries[1] == "CPUExecutionProvider"
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"] == str(tmp_path)
    assert opts["trt_fp16_enable"] == "False" and opts["trt_layer_norm_fp32_fallback"] == "True"
    default = provider_entries(["TensorrtExecutionProvider"], OrtOptions(), "abc")[0][1]["trt_engine_cache_path"]
    assert default.endswith("ort-trt/abc")
