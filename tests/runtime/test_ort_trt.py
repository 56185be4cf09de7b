"""ONNX Runtime's TensorRT execution provider gets one shape profile per graph (so changing window lengths do not
rebuild engines) and its engine cache; checked through a stand-in onnxruntime that records the session options."""

import sys
import types

import pytest

from elma.runtime.backends import OrtBackend, OrtOptions
from elma.runtime.bundle import load_bundle
from elma.runtime.ort_trt import ort_version, profile_options

GROUP_INPUTS = [{"name": "hidden_states", "shape": ["batch", "seq", 32]}, {"name": "attention_mask", "shape": ["batch", "seq"]}]


def test_profile_covers_every_batch_and_window_length():
    opts = profile_options(GROUP_INPUTS, max_batch=4, max_seq=384, ort_version_str="1.16.3")
    assert opts == {"trt_profile_min_shapes": "hidden_states:1x1x32,attention_mask:1x1",
                    "trt_profile_opt_shapes": "hidden_states:1x384x32,attention_mask:1x384",
                    "trt_profile_max_shapes": "hidden_states:4x384x32,attention_mask:4x384"}


def test_onnxruntime_before_1_15_gets_no_profile_options():
    """Older providers refuse unknown options, so a JetPack 4.6 onnxruntime (1.11) gets none rather than an error."""
    assert profile_options(GROUP_INPUTS, 4, 64, "1.11.0") == {}
    assert ort_version("1.11.0+jetson") == (1, 11)
    with pytest.raises(ValueError, match="opt_batch <= max_batch"):
        profile_options(GROUP_INPUTS, 2, 64, "1.16.0", opt_batch=3)
    with pytest.raises(ValueError, match="neither 'batch' nor 'seq'"):
        profile_options([{"name": "x", "shape": ["time"]}], 2, 64, "1.16.0")


def fake_onnxruntime(version, sessions):
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = version

    class SessionOptions:
        def add_session_config_entry(self, key, value):
            pass

    class InferenceSession:
        def __init__(self, path, so, providers):
            sessions.append((path, providers))

    ort.SessionOptions, ort.InferenceSession = SessionOptions, InferenceSession
    ort.ExecutionMode = types.SimpleNamespace(ORT_SEQUENTIAL=0)
    ort.GraphOptimizationLevel = types.SimpleNamespace(ORT_DISABLE_ALL=0, ORT_ENABLE_BASIC=1, ORT_ENABLE_EXTENDED=2,
                                                       ORT_ENABLE_ALL=3)
    ort.get_available_providers = lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return ort


def test_each_session_gets_the_profile_of_its_own_inputs(tiny_bundles, tmp_path, monkeypatch):
    bundle = load_bundle(tiny_bundles.bundle("bert"))
    sessions = []
    monkeypatch.setitem(sys.modules, "onnxruntime", fake_onnxruntime("1.17.1", sessions))
    OrtBackend(bundle, OrtOptions(trt_cache_dir=str(tmp_path / "cache"), trt_max_batch=2))
    assert [p.rsplit("/", 1)[-1] for p, _ in sessions] == ["embeddings.onnx", "group0.onnx", "group1.onnx",
                                                           "group2.onnx", "exit0.onnx", "exit1.onnx", "exit2.onnx"]
    T, H = bundle.max_seq_length, bundle.hidden_size
    by_name = {p.rsplit("/", 1)[-1]: providers for p, providers in sessions}
    name, trt = by_name["embeddings.onnx"][0]
    assert name == "TensorrtExecutionProvider" and trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_profile_max_shapes"] == f"input_ids:2x{T},token_type_ids:2x{T}"
    _, trt = by_name["exit1.onnx"][0]
    assert trt["trt_profile_min_shapes"] == f"hidden_states:1x1x{H},attention_mask:1x1"
    assert trt["trt_profile_max_shapes"] == f"hidden_states:2x{T}x{H},attention_mask:2x{T}"
    assert by_name["exit1.onnx"][1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert (tmp_path / "cache").is_dir()
