"""Backends: ONNX Runtime sessions set up for a chain of short runs (no spinning, one session per distinct file),
provider choice, and one runtime shared by threads answering as it does sequentially."""

import threading

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from conftest import PASSAGES  # noqa: E402

from elma.runtime.backends import OrtBackend, OrtOptions, choose_providers, session_options  # noqa: E402
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
