"""TensorRT backend without a GPU: stand-ins for tensorrt and CUDA check the I/O wiring of both TensorRT APIs
(8.0-8.4 bindings, 8.5+ named tensors), the shared scratch memory, ping-pong hidden buffers, rows dropped on the
device, buffers freed, and CUDA status checks. The real engines run only where tensorrt and a GPU exist."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_wordpiece_tokenizer

from elma.data.features import WindowConfig
from elma.errors import BundleError, EngineLoadError
from elma.runtime.backends import Backend
from elma.runtime.engine import ModelInfo, Runtime
from elma.runtime.trt_backend import TensorRTBackend, cuda_call, max_shape

H = 3  # hidden size of the stand-in model


# ---- stand-ins ------------------------------------------------------------------------------------------------

class FakeCuda:
    """Device memory as host arrays; pointers are made-up addresses."""

    name = "fake-cuda"

    def __init__(self):
        self.blocks = {}
        self.next = 0x1000
        self.freed = []

    def malloc(self, nbytes):
        ptr = self.next
        self.blocks[ptr] = np.zeros(max(nbytes, 1), dtype=np.uint8)
        self.next += nbytes + 0x1000
        return ptr

    def free(self, ptr):
        self.freed.append(ptr)
        del self.blocks[ptr]

    def view(self, ptr, nbytes):
        for base, block in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + block.size:
                return block[ptr - base: ptr - base + nbytes]
        raise AssertionError(f"no allocation holds {ptr:#x}+{nbytes}")

    def array(self, ptr, shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.view(ptr, n).view(dtype).reshape(shape)

    def stream(self):
        return "stream"

    def stream_handle(self, stream):
        return 7

    def destroy_stream(self, stream):
        pass

    def htod(self, dst, src, stream):
        self.view(dst, src.nbytes)[:] = np.frombuffer(src.tobytes(), dtype=np.uint8)

    def dtoh(self, dst, src, stream):
        dst.reshape(-1).view(np.uint8)[:] = self.view(src, dst.nbytes)

    def dtod(self, dst, src, nbytes, stream):
        self.view(dst, nbytes)[:] = self.view(src, nbytes).copy()

    def synchronize(self, stream):
        pass


IO = {"embeddings": (["input_ids", "token_type_ids"], ["hidden_states"]),
      "group": (["hidden_states", "attention_mask"], ["layer_output"]),
      "exit": (["hidden_states", "attention_mask"], ["start_logits", "end_logits"])}


def fake_math(kind, k, inputs):
    """What each stand-in engine computes (numpy), shared with the reference backend below."""
    if kind == "embeddings":
        ids, types = inputs
        return [np.repeat((ids + 0.5 * types).astype(np.float32)[..., None], H, axis=-1) / 10]
    hidden, mask = inputs
    if kind == "group":
        return [((hidden + np.arange(H, dtype=np.float32)) * 0.9 * mask[..., None]).astype(np.float32)]
    return [(hidden.sum(-1) * (k + 1)).astype(np.float32), (hidden[..., 0] - k).astype(np.float32)]


class FakeEngine:
    def __init__(self, trt, kind, k):
        self.trt, self.kind, self.k = trt, kind, k
        self.ins, self.outs = IO[kind]
        self.names = self.ins + self.outs
        self.device_memory_size = 100 * (k + 2)
        self.contexts = []

    # 8.5+ API
    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name in self.ins else self.trt.TensorIOMode.OUTPUT

    # 8.0-8.4 API
    @property
    def num_bindings(self):
        return len(self.names)

    def get_binding_name(self, i):
        return self.names[i]

    def binding_is_input(self, i):
        return self.names[i] in self.ins

    def create_execution_context_without_device_memory(self):
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine):
        self.engine = engine
        self.shapes, self.addresses, self.device_memory, self.calls = {}, {}, None, []

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def set_binding_shape(self, idx, shape):
        return self.set_input_shape(self.engine.names[idx], shape)

    def execute_async_v3(self, stream_handle):
        self.calls.append("v3")
        return self._execute(self.addresses)

    def execute_async_v2(self, bindings, stream_handle):
        self.calls.append("v2")
        return self._execute(dict(zip(self.engine.names, bindings)))

    def _execute(self, addresses):
        assert self.device_memory is not None, "context memory must be set before running"
        cuda = self.engine.trt.cuda
        e = self.engine
        b, t = self.shapes[e.ins[0]][:2]
        if e.kind == "embeddings":
            inputs = [cuda.array(addresses[n], (b, t), np.int32) for n in e.ins]
        else:
            inputs = [cuda.array(addresses["hidden_states"], (b, t, H), np.float32).copy(),
                      cuda.array(addresses["attention_mask"], (b, t), np.int32)]
        for name, value in zip(e.outs, fake_math(e.kind, e.k, inputs)):
            cuda.array(addresses[name], value.shape, np.float32)[...] = value
        return True


def fake_trt(version, cuda):
    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            kind, k = data.decode().split(":")
            return FakeEngine(trt, kind, int(k))

    trt = SimpleNamespace(__version__=version, cuda=cuda, Runtime=Runtime, TensorIOMode=SimpleNamespace(INPUT=1, OUTPUT=2),
                          Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}))
    return trt


def fake_bundle(tmp_path: Path, layers=3, shared=True, max_batch=8, max_seq=64):
    root = tmp_path / "bundle"
    root.mkdir()
    plans = {"embeddings.onnx": "embeddings.plan"}
    (root / "embeddings.plan").write_text("embeddings:0")
    groups = ["group0.onnx"] * layers if shared else [f"group{i}.onnx" for i in range(layers)]
    for g in set(groups):
        plans[g] = g.replace(".onnx", ".plan")
        (root / plans[g]).write_text("group:0")
    for i in range(layers):
        plans[f"exit{i}.onnx"] = f"exit{i}.plan"
        (root / f"exit{i}.plan").write_text(f"exit:{i}")
    profile = {"max": [max_batch, max_seq, H], "min": [1, 1, H], "opt": [1, max_seq, H]}
    engines = {"plans": plans, "profiles": {"group": {"hidden_states": profile}, "exit": {"hidden_states": profile}}}
    layer_paths = tuple(root / g for g in groups)
    return SimpleNamespace(root=root, engines=engines, embeddings=root / "embeddings.onnx", layers=layer_paths,
                           group_files=tuple(dict.fromkeys(layer_paths)), exits=tuple(root / f"exit{i}.onnx" for i in range(layers)),
                           num_layers=layers, hidden_size=H, max_seq_length=max_seq)


class NumpyReference(Backend):
    """The stand-in maths on the host: what the TensorRT wiring must reproduce."""

    name = "numpy"

    def __init__(self, layers):
        self.num_layers = layers

    def embed(self, ids, types):
        return fake_math("embeddings", 0, [ids, types])[0]

    def run_layer(self, slot, hidden, mask):
        return fake_math("group", 0, [hidden, mask])[0]

    def run_exit(self, slot, hidden, mask):
        return tuple(fake_math("exit", slot, [hidden, mask]))


@pytest.fixture(params=["10.3.0", "8.6.2", "8.2.1"])
def backend(request, tmp_path):
    cuda = FakeCuda()
    be = TensorRTBackend(fake_bundle(tmp_path), trt=fake_trt(request.param, cuda), cuda=cuda, check_target=False)
    yield be
    be.close()


# ---- tests ----------------------------------------------------------------------------------------------------

def test_both_io_apis_reproduce_the_steps(backend):
    ref = NumpyReference(3)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (2, 10)).astype(np.int32)
    types = (np.arange(10) > 4).astype(np.int32)[None].repeat(2, 0)
    mask = np.ones((2, 10), np.int32)
    mask[1, 7:] = 0
    hidden, want = backend.embed(ids, types), ref.embed(ids, types)
    for slot in range(3):
        hidden, want = backend.run_layer(slot, hidden, mask), ref.run_layer(slot, want, mask)
        got_s, got_e = backend.run_exit(slot, hidden, mask)
        want_s, want_e = ref.run_exit(slot, want, mask)
        np.testing.assert_allclose(got_s, want_s, rtol=1e-6)
        np.testing.assert_allclose(got_e, want_e, rtol=1e-6)
    api = "v2" if backend.trt.__version__.startswith("8.2") else "v3"
    assert {c for r in backend._layers + backend._exits for c in r.context.calls} == {api}


def test_one_context_per_engine_sharing_one_scratch_buffer(backend):
    assert backend.runner_count == 1 + 1 + 3, "ALBERT's shared group engine is loaded once"
    runners = [backend._embed, *backend._layers, *backend._exits]
    assert len({id(r.context) for r in runners}) == 5
    assert len({r.context.device_memory for r in runners}) == 1
    assert (backend.max_batch, backend.max_seq) == (8, 64)


def test_rows_are_dropped_on_the_device(backend):
    ids = np.arange(40, dtype=np.int32).reshape(4, 10)
    hidden = backend.embed(ids, np.zeros_like(ids))
    kept = backend.select_rows(hidden, [3, 1], 6)
    assert kept.shape == (2, 6, H) and kept.ptr != hidden.ptr
    got = backend.cuda.array(kept.ptr, kept.shape, np.float32)
    want = NumpyReference(3).embed(ids, np.zeros_like(ids))[[3, 1], :6]
    np.testing.assert_allclose(got, want)


def test_runtime_on_tensorrt_equals_the_reference_with_a_shrinking_batch(backend):
    tokenizer = make_wordpiece_tokenizer()
    info = ModelInfo(Path("."), "bundle", "bert", 3, WindowConfig(64, 16, 16), (0.0, 0.0, 0.0), Path("tokenizer.json"))
    items = [("who is the king", "the king was rollo . the norman duke built a castle near the river"),
             ("what city", "rouen was the capital of normandy"),
             ("where", "the tower of the old city")]
    policy = "entropy:1,1"
    with Runtime(backend, info, tokenizer=tokenizer) as trt_rt:
        got = trt_rt.ask_batch(items, policy=policy)
    assert [a.exit_layer for a in got] == [3, 1, 1], "two rows leave after layer 1, one runs on"
    ref_rt = Runtime(NumpyReference(3), info, tokenizer=make_wordpiece_tokenizer())
    want = [ref_rt.ask(q, c, policy=policy) for q, c in items]
    for a, b in zip(got, want):
        assert (a.text, a.exit_layer, a.no_answer) == (b.text, b.exit_layer, b.no_answer)


def test_tokens_are_gathered_on_the_device(backend):
    from elma.runtime.skim import copy_runs, gather_index

    ids = np.arange(40, dtype=np.int32).reshape(4, 10)
    hidden = backend.embed(ids, np.zeros_like(ids))
    kept = [np.array([0, 1, 2, 6, 7, 9]), np.array([0, 4]), np.arange(5)]
    index = gather_index(kept, 6)
    copies = []
    cuda = backend.cuda

    def dtod(dst, src, nbytes, stream):
        assert stream == backend._stream, "the backend's stream"
        copies.append(nbytes)
        FakeCuda.dtod(cuda, dst, src, nbytes, stream)

    def no_host_copy(*args):
        raise AssertionError("select_tokens must not copy through the host")

    cuda.dtod, cuda.dtoh, cuda.htod = dtod, no_host_copy, no_host_copy
    out = backend.select_tokens(hidden, [3, 0, 2], index)
    assert out.shape == (3, 6, H) and out.ptr != hidden.ptr
    assert len(copies) == sum(len(copy_runs(r)) for r in index) < index.size, "one copy per contiguous run"
    got = cuda.array(out.ptr, out.shape, np.float32)
    want = NumpyReference(3).embed(ids, np.zeros_like(ids))[np.array([3, 0, 2])[:, None], index]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="does not fit"):
        backend.select_tokens(hidden, [0], np.array([[0, 10]]))


def test_runtime_on_tensorrt_equals_the_reference_with_skimming(backend):
    tokenizer = make_wordpiece_tokenizer()
    info = ModelInfo(Path("."), "bundle", "bert", 3, WindowConfig(64, 16, 16), (0.0, 0.0, 0.0), Path("tokenizer.json"))
    items = [("who is the king", "the king was rollo . the norman duke built a castle near the river"),
             ("what city", "rouen was the capital of normandy and the old city of the norman people"),
             ("where", "the tower of the old city")]
    ref_rt = Runtime(NumpyReference(3), info, tokenizer=make_wordpiece_tokenizer())
    with Runtime(backend, info, tokenizer=tokenizer) as trt_rt:
        for policy in ("none+skim:1,0.01", "entropy:1,1+skim:1,0.01+skim:2,0.05"):
            got = trt_rt.ask_batch(items, policy=policy)
            want = [ref_rt.ask(q, c, policy=policy) for q, c in items]
            for a, b in zip(got, want):
                assert (a.text, a.exit_layer, a.no_answer, a.tokens_per_layer) == (b.text, b.exit_layer, b.no_answer,
                                                                                   b.tokens_per_layer)
            full = trt_rt.ask_batch(items, policy="none")
            assert sum(a.token_layers for a in got) < sum(a.token_layers for a in full), "tokens were dropped"


def test_close_frees_every_buffer(tmp_path):
    cuda = FakeCuda()
    be = TensorRTBackend(fake_bundle(tmp_path), trt=fake_trt("10.3.0", cuda), cuda=cuda, check_target=False)
    allocated = set(cuda.blocks)
    be.close()
    be.close()
    assert set(cuda.freed) == allocated and not cuda.blocks


def test_bundles_without_engines_and_missing_plans_are_refused(tmp_path):
    cuda = FakeCuda()
    bundle = fake_bundle(tmp_path)
    with pytest.raises(BundleError, match="elma build-engines"):
        TensorRTBackend(SimpleNamespace(**{**vars(bundle), "engines": None}), trt=fake_trt("10.3.0", cuda), cuda=cuda)
    bundle.engines["plans"].pop("exit2.onnx")
    with pytest.raises(BundleError, match="no engine for exit2.onnx"):
        TensorRTBackend(bundle, trt=fake_trt("10.3.0", cuda), cuda=cuda, check_target=False)


def test_batches_beyond_the_profile_are_refused(tmp_path):
    cuda = FakeCuda()
    be = TensorRTBackend(fake_bundle(tmp_path, max_batch=2), trt=fake_trt("10.3.0", cuda), cuda=cuda, check_target=False)
    with pytest.raises(ValueError, match="exceeds the engines' 2x64"):
        be.embed(np.zeros((3, 8), np.int32), np.zeros((3, 8), np.int32))


def test_cuda_call_checks_every_status():
    assert cuda_call((0, 1234)) == 1234 and cuda_call((0,)) is None and cuda_call((0, 1, 2)) == (1, 2)
    err = SimpleNamespace(value=2, name="cudaErrorMemoryAllocation")
    with pytest.raises(EngineLoadError, match="cudaErrorMemoryAllocation"):
        cuda_call((err, None))
    with pytest.raises(EngineLoadError, match="cudaError 700"):
        cuda_call(700)


def test_profile_shapes_give_the_buffer_size():
    p = {"group": {"hidden_states": {"min": [1, 1, 8], "opt": [1, 64, 8], "max": [8, 128, 8]}},
         "exit": {"hidden_states": {"max": [4, 128, 8]}}}
    assert max_shape(p) == (4, 128) and max_shape({}) is None


@pytest.mark.gpu
def test_real_engines_match_onnxruntime(tiny_bundles, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT and a CUDA GPU (a Jetson or a desktop GPU)")
    import shutil

    from elma.export.tensorrt_build import EngineBuildConfig, build_engines

    bundle = shutil.copytree(tiny_bundles.bundle("bert"), tmp_path / "b")
    build_engines(bundle, EngineBuildConfig(max_batch=4))
    items = [("who is the king", "the king was rollo . the norman duke built a castle near the river")]
    with Runtime.open(bundle, backend="tensorrt") as a, Runtime.open(bundle) as b:
        for k in range(1, 4):
            x, y = a.ask(*items[0], policy=f"static:{k}"), b.ask(*items[0], policy=f"static:{k}")
            assert (x.text, x.exit_layer) == (y.text, y.exit_layer) and x.score == pytest.approx(y.score, abs=1e-2)
    assert trt.__version__


@pytest.mark.gpu
def test_real_engines_skim_as_onnxruntime_does(tiny_bundles, tmp_path):
    pytest.importorskip("tensorrt", reason="needs TensorRT and a CUDA GPU (a Jetson or a desktop GPU)")
    import shutil

    from elma.export.tensorrt_build import EngineBuildConfig, build_engines

    bundle = shutil.copytree(tiny_bundles.bundle("bert"), tmp_path / "b")
    build_engines(bundle, EngineBuildConfig(max_batch=4))
    items = [("who is the king", "the king was rollo . the norman duke built a castle near the river"),
             ("what city", "rouen was the capital of normandy and the old city of the norman people")]
    with Runtime.open(bundle, backend="tensorrt") as a, Runtime.open(bundle) as b:
        for policy in ("none+skim:1,0", "none+skim:1,0.03", "entropy:2.5,2.5+skim:1,0.03+skim:2,0.06"):
            for x, y in zip(a.ask_batch(items, policy=policy), b.ask_batch(items, policy=policy)):
                assert (x.text, x.exit_layer, x.tokens_per_layer) == (y.text, y.exit_layer, y.tokens_per_layer)
                assert x.score == pytest.approx(y.score, abs=1e-2)
