"""elma build-engines without a GPU: profile shapes, the per-version builder calls (through a recording stand-in
for the tensorrt module), the manifest it leaves, and the errors where TensorRT is missing or cannot help."""

import shutil
import sys
import types
from pathlib import Path

import pytest

from elma.cli import main
from elma.errors import ExportError, TensorRTUnavailable
from elma.export import tensorrt_build
from elma.export.tensorrt_build import EngineBuildConfig, ProfileShape, build_engines, plan_name, profile_shapes
from elma.runtime import trt_compat
from elma.runtime.bundle import load_bundle
from elma.runtime.trt_compat import EngineTarget, check_engine_compat

GROUP_INPUTS = [{"name": "hidden_states", "dtype": "float32", "shape": ["batch", "seq", 384]},
                {"name": "attention_mask", "dtype": "int32", "shape": ["batch", "seq"]}]


def test_profile_covers_batch_and_sequence_ranges():
    shapes = profile_shapes(GROUP_INPUTS, 384, EngineBuildConfig(max_batch=8))
    assert shapes["hidden_states"] == ProfileShape(min=(1, 1, 384), opt=(1, 384, 384), max=(8, 384, 384))
    assert shapes["attention_mask"] == ProfileShape(min=(1, 1), opt=(1, 384), max=(8, 384))
    tuned = profile_shapes(GROUP_INPUTS, 384, EngineBuildConfig(max_batch=4, opt_batch=2, opt_seq_length=128,
                                                                min_seq_length=16))
    assert tuned["attention_mask"] == ProfileShape(min=(1, 16), opt=(2, 128), max=(4, 384))


def test_bad_profiles_are_refused():
    with pytest.raises(ValueError, match="opt_seq_length <= max_seq_length"):
        profile_shapes(GROUP_INPUTS, 64, EngineBuildConfig(opt_seq_length=128))
    with pytest.raises(ValueError, match="opt_batch <= max_batch"):
        EngineBuildConfig(max_batch=2, opt_batch=4)
    with pytest.raises(ValueError, match="neither 'batch', 'seq' nor a size"):
        profile_shapes([{"name": "x", "shape": ["batch", "time"]}], 64, EngineBuildConfig())


def test_plan_names_follow_graph_names():
    assert [plan_name(n) for n in ("group0.onnx", "exit11.onnx", "fused.onnx")] == ["group0.plan", "exit11.plan",
                                                                                    "fused.plan"]


# ---- a recording stand-in for the tensorrt module ---------------------------------------------------------------

def fake_tensorrt(version: str, calls: list) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16, trt.int32 = "float32", "float16", "int32"
    trt.LayerType = types.SimpleNamespace(NORMALIZATION="NORMALIZATION", SOFTMAX="SOFTMAX", REDUCE="REDUCE",
                                          MATRIX_MULTIPLY="MATRIX_MULTIPLY")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY", STRICT_TYPES="STRICT")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)

    class Logger:
        WARNING = "W"

        def __init__(self, level):
            pass

    class Tensor:
        def __init__(self, dtype):
            self.dtype = dtype

    class Layer:
        def __init__(self, kind, dtype="float32"):
            self.type, self.precision, self.outputs, self.output_types = kind, None, [Tensor(dtype)], {}
            self.num_outputs = 1

        def get_output(self, i):
            return self.outputs[i]

        def set_output_type(self, i, dtype):
            self.output_types[i] = dtype

    class Network:
        def __init__(self, flags):
            self.flags, self.layers, self.source = flags, [], None

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data, path):
            assert Path(path).read_bytes() == data and (Path(path).parent / "weights.bin").is_file()
            self.network.source = Path(path).name
            self.network.layers = [Layer("NORMALIZATION"), Layer("MATRIX_MULTIPLY"), Layer("SOFTMAX"),
                                   Layer("REDUCE", dtype="int32")]
            return True

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"timing cache after " + str(len(calls)).encode()

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.cache, self.max_workspace_size, self.pool = set(), [], None, None, None

        def set_memory_pool_limit(self, pool, size):
            self.pool = (pool, size)

        def set_flag(self, flag):
            self.flags.add(flag)

        def create_timing_cache(self, data):
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            assert ignore_mismatch is False
            self.cache = cache
            return True

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    class Profile(dict):
        def set_shape(self, name, lo, opt, hi):
            self[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append((network, config))
            return b"engine of " + network.source.encode()

    if version.startswith("8.0") or version.startswith("8.2"):
        del Config.set_memory_pool_limit  # not there before 8.4
    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    return trt


@pytest.fixture
def bundle(tiny_bundles, tmp_path):
    return Path(shutil.copytree(tiny_bundles.bundle("bert"), tmp_path / "bundle"))


def use_fake(monkeypatch, version):
    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, calls))
    monkeypatch.setattr(trt_compat, "gpu_identity", lambda device=0: ("Orin", "8.7"))
    return calls


def test_one_engine_per_graph_recorded_in_the_manifest(bundle, monkeypatch):
    calls = use_fake(monkeypatch, "10.3.0")
    report = build_engines(bundle, EngineBuildConfig(fp16=True, workspace_mb=256, max_batch=4))
    built = [net.source for net, _ in calls]
    assert built == ["embeddings.onnx", "group0.onnx", "group1.onnx", "group2.onnx", "exit0.onnx", "exit1.onnx",
                     "exit2.onnx", "fused.onnx"]
    assert report.plans["group1.onnx"] == "group1.plan" and (bundle / "group1.plan").read_bytes() == b"engine of group1.onnx"
    configs = [config for _, config in calls]
    assert len({id(c.cache) for c in configs}) == 1, "one timing cache across all graphs"
    assert (bundle / "timing.cache").read_bytes() == b"timing cache after 8"
    net, config = calls[1]
    assert net.flags == 0, "TensorRT 10: no EXPLICIT_BATCH flag"
    assert config.pool == ("WORKSPACE", 256 << 20) and config.flags == {"FP16", "OBEY"}
    assert config.profiles[0]["hidden_states"] == ((1, 1, 32), (1, 64, 32), (4, 64, 32))
    norm, matmul, softmax, reduce_int = net.layers
    assert norm.precision == softmax.precision == "float32" and norm.output_types == {0: "float32"}
    assert matmul.precision is None, "only normalisation, softmax and reductions are pinned"
    assert reduce_int.precision is None and reduce_int.output_types == {}, "integer reductions keep their type"

    loaded = load_bundle(bundle)  # plans and timing cache are checksummed like every other file
    engines = loaded.engines
    assert (engines["tensorrt_version"], engines["gpu_name"], engines["compute_capability"]) == ("10.3.0", "Orin", "8.7")
    assert engines["fp16"] is True and engines["io_api"] == "tensors" and engines["plans"]["fused.onnx"] == "fused.plan"
    assert engines["profiles"]["exit"]["attention_mask"]["max"] == [4, 64]
    check_engine_compat(engines, EngineTarget("10.3.0", "Orin", "8.7"))
    with pytest.raises(Exception, match="rebuild them"):
        check_engine_compat(engines, EngineTarget("8.6.2", "Orin", "8.7"))


def test_timing_cache_is_reused_only_for_the_same_target(bundle, monkeypatch):
    calls = use_fake(monkeypatch, "10.3.0")
    build_engines(bundle)
    assert calls[0][1].cache.data == b"", "first build: empty cache"
    calls.clear()
    build_engines(bundle)
    assert calls[0][1].cache.data == b"timing cache after 8", "rebuild on the same GPU starts from the saved cache"
    calls.clear()
    monkeypatch.setattr(trt_compat, "gpu_identity", lambda device=0: ("Xavier", "7.2"))
    build_engines(bundle)
    assert calls[0][1].cache.data == b"", "another GPU: the old cache is not offered"
    assert load_bundle(bundle).engines["gpu_name"] == "Xavier"


def test_tensorrt_8_2_uses_the_older_builder_api(bundle, monkeypatch):
    calls = use_fake(monkeypatch, "8.2.1.8")
    build_engines(bundle, EngineBuildConfig(fp16=True, workspace_mb=64))
    net, config = calls[0]
    assert net.flags == 1 << 0, "EXPLICIT_BATCH before TensorRT 10"
    assert config.pool is None and config.max_workspace_size == 64 << 20
    assert "STRICT" not in config.flags and "OBEY" in config.flags
    assert load_bundle(bundle).engines["io_api"] == "bindings"


def test_fp32_build_sets_no_precision_flags(bundle, monkeypatch):
    calls = use_fake(monkeypatch, "8.6.2.3")
    build_engines(bundle)
    net, config = calls[0]
    assert config.flags == set() and all(layer.precision is None for layer in net.layers)


def test_no_tensorrt_is_one_line_and_a_non_zero_exit(bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailable, match="not installed"):
        build_engines(bundle)
    assert main(["build-engines", str(bundle)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("elma build-engines: error: the Python module `tensorrt` is not installed")
    assert not list(bundle.glob("*.plan")) and load_bundle(bundle).engines is None, "bundle untouched"


def test_int8_bundles_are_refused_before_tensorrt_is_needed(tiny_bundles, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ExportError, match=r"int8 bundles .*\(CPU only\)"):
        tensorrt_build.build_engines(tiny_bundles.bundle("bert", "int8"))


# ---- opset 13: LayerNorm decomposed, every step of it pinned ----------------------------------------------------

ONNX_TO_LAYER = {"ReduceMean": "REDUCE", "Sub": "ELEMENTWISE", "Pow": "ELEMENTWISE", "Add": "ELEMENTWISE",
                 "Div": "ELEMENTWISE", "Mul": "ELEMENTWISE", "Sqrt": "UNARY", "Erf": "UNARY",
                 "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY", "Softmax": "SOFTMAX", "Constant": "CONSTANT"}


def opset13_layernorm_nodes(tmp_path):
    """(op type, node name) of a dense layer + residual + LayerNorm as torch's exporter writes them at opset 13."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = torch.nn.Linear(8, 8)
            self.LayerNorm = torch.nn.LayerNorm(8)

        def forward(self, x):
            return self.LayerNorm(torch.nn.functional.gelu(self.dense(x)) + x)

    path = tmp_path / "block.onnx"
    torch.onnx.export(Block().eval(), (torch.zeros(1, 4, 8),), str(path), opset_version=13, dynamo=False)
    return [(n.op_type, n.name) for n in onnx.load(str(path)).graph.node]


def test_opset13_layernorm_steps_are_pinned_to_fp32(tmp_path):
    """Before TensorRT 8.6 LayerNorm is Pow/Sqrt/Div/ReduceMean/Sub/Add layers: fp16 squares overflow, so all of them
    stay fp32, while the dense layer, GELU and the residual add keep fp16."""
    nodes = opset13_layernorm_nodes(tmp_path)
    ln_ops = {op for op, name in nodes if "LayerNorm" in name}
    assert {"ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Add"} <= ln_ops, f"not decomposed at opset 13: {nodes}"
    trt = fake_tensorrt("8.2.1.8", [])
    trt.LayerType = types.SimpleNamespace(**{t: t for t in set(ONNX_TO_LAYER.values()) | {"SHUFFLE"}})
    layers = []
    for op, name in nodes:  # what the ONNX parser makes: one layer per node, named after it
        layer = types.SimpleNamespace(type=ONNX_TO_LAYER.get(op, "SHUFFLE"), name=name, precision=None, num_outputs=1,
                                      output_types={}, out=types.SimpleNamespace(dtype="float32"))
        layer.get_output = lambda i, layer=layer: layer.out
        layer.set_output_type = lambda i, dtype, layer=layer: layer.output_types.__setitem__(i, dtype)
        layers.append(layer)
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    tensorrt_build.pin_layers_fp32(trt, network)
    pinned = {(layer.type, layer.name.rsplit("/", 1)[-1]) for layer in layers if layer.precision == "float32"}
    ln = [layer for layer in layers if "LayerNorm" in layer.name and layer.type != "CONSTANT"]
    assert ln and all(layer.precision == "float32" and layer.output_types == {0: "float32"} for layer in ln), pinned
    others = [layer for layer in layers if "LayerNorm" not in layer.name and layer.type in ("ELEMENTWISE", "UNARY",
                                                                                            "MATRIX_MULTIPLY")]
    assert others and all(layer.precision is None for layer in others), "only the LayerNorm scope is pinned"


def test_tensorrt_11_is_refused_before_building(bundle, monkeypatch, capsys):
    use_fake(monkeypatch, "11.0.0")
    with pytest.raises(TensorRTUnavailable, match="TensorRT 11.0.0 is not supported"):
        build_engines(bundle, EngineBuildConfig(fp16=True))
    assert main(["build-engines", str(bundle)]) == 3
    assert "TensorRT 11 removed the FP16/OBEY_PRECISION_CONSTRAINTS builder flags" in capsys.readouterr().err
    assert not list(bundle.glob("*.plan")), "nothing built"


def test_a_tensorrt_without_the_precision_flag_says_so(bundle, monkeypatch):
    use_fake(monkeypatch, "10.3.0")
    del sys.modules["tensorrt"].BuilderFlag.OBEY_PRECISION_CONSTRAINTS
    with pytest.raises(ExportError, match="no BuilderFlag.OBEY_PRECISION_CONSTRAINTS"):
        build_engines(bundle, EngineBuildConfig(fp16=True))
