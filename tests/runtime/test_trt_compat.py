"""TensorRT version parsing, API selection per version, and the engine compatibility check (no GPU needed)."""

import sys

import pytest

from elma.errors import EngineLoadError, TensorRTUnavailable
from elma.runtime import trt_compat
from elma.runtime.trt_compat import EngineTarget, check_engine_compat, parse_trt_version, trt_features


@pytest.mark.parametrize("text, want", [
    ("8.0.1.6", (8, 0, 1, 6)), ("8.2.1.8", (8, 2, 1, 8)), ("10.3.0", (10, 3, 0)), ("8.6.2.3+cuda12.2", (8, 6, 2, 3)),
    ("10.0.1.post1", (10, 0, 1)), (" 8.5 ", (8, 5)),
])
def test_versions_parse(text, want):
    assert parse_trt_version(text) == want


def test_garbage_versions_are_refused():
    with pytest.raises(ValueError, match="not a TensorRT version"):
        parse_trt_version("unknown")


@pytest.mark.parametrize("version, io_api, pool, flag, explicit, layernorm", [
    ("8.0.1.6", "bindings", False, "STRICT_TYPES", True, False),  # JetPack 4.6
    ("8.2.1.8", "bindings", False, "OBEY_PRECISION_CONSTRAINTS", True, False),  # JetPack 4.6.1
    ("8.4.1.5", "bindings", True, "OBEY_PRECISION_CONSTRAINTS", True, False),
    ("8.5.2.2", "tensors", True, "OBEY_PRECISION_CONSTRAINTS", True, False),  # JetPack 5.1
    ("8.6.2.3", "tensors", True, "OBEY_PRECISION_CONSTRAINTS", True, True),  # JetPack 6.0
    ("10.3.0.30", "tensors", True, "OBEY_PRECISION_CONSTRAINTS", False, True),  # JetPack 6.1/6.2
])
def test_api_follows_the_version(version, io_api, pool, flag, explicit, layernorm):
    f = trt_features(version)
    assert (f.io_api, f.memory_pool_api, f.precision_flag, f.explicit_batch_flag, f.native_layernorm) == (
        io_api, pool, flag, explicit, layernorm)


def test_tensorrt_7_is_too_old():
    with pytest.raises(TensorRTUnavailable, match="8.0 or newer"):
        trt_features("7.1.3")


ORIN_85 = EngineTarget("8.5.2.2", "Orin", "8.7")


def test_engines_run_where_they_were_built():
    check_engine_compat(ORIN_85.to_dict(), EngineTarget("8.5.2.2", "Orin", "8.7"))
    check_engine_compat(ORIN_85.to_dict(), EngineTarget("8.5.2.9", "Orin", "8.7"))  # the build number may differ


@pytest.mark.parametrize("current, what", [
    (EngineTarget("10.3.0", "Orin", "8.7"), "TensorRT 8.5.2.2 \\(this machine has 10.3.0\\)"),
    (EngineTarget("8.5.2.2", "Xavier", "7.2"), "GPU Orin \\(compute capability 8.7; this machine has Xavier, 7.2\\)"),
    (EngineTarget("8.5.2.2", "NVIDIA GeForce RTX 3090", "8.6"), "GPU Orin"),
])
def test_mismatching_engines_are_refused_with_the_rebuild_command(current, what):
    with pytest.raises(EngineLoadError, match=what) as err:
        check_engine_compat(ORIN_85.to_dict(), current, "models/b")
    assert "elma build-engines models/b" in str(err.value)


def test_no_tensorrt_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, even where it is installed
    with pytest.raises(TensorRTUnavailable, match="`tensorrt` is not installed.*JetPack"):
        trt_compat.import_tensorrt()
    with pytest.raises(TensorRTUnavailable):
        trt_compat.current_engine_target()


def test_no_gpu_binding_is_a_clear_error(monkeypatch):
    for name in ("cuda", "cuda.bindings", "pycuda", "pycuda.driver", "torch"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU found"):
        trt_compat.gpu_identity()


@pytest.mark.parametrize("version", ["11.0.0", "11.4.1.2"])
def test_tensorrt_11_is_refused(version):
    """TensorRT 11 removed BuilderFlag.FP16 and OBEY_PRECISION_CONSTRAINTS (NVIDIA's 10.x -> 11.x migration guide)."""
    with pytest.raises(TensorRTUnavailable, match=rf"TensorRT {version} is not supported.*8.0-10.x"):
        trt_features(version)
