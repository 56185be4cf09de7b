"""TensorRT backend without a GPU: stand-ins for tensorrt and CUDA check the I/O wiring of both TensorRT APIs
(8.0-8.4 bindings, 8.5+ named tensors), the shared scratch memory, ping-pong hidden buffers, rows dropped on the
device, buffers freed, and CUDA status checks. The real engines run only where tensorrt and a GPU exist."""

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_wordpiece_tokenizer

from elma.data.features import WindowConfig
from elma.errors import BundleError, EngineLoadError, TensorRTUnavailable
from elma.runtime.backends import Backend
from elma.runtime.engine import ModelInfo, Runtime
from elma.runtime.trt_backend import TensorRTBackend, cuda_call, max_shape

H = 3  # hidden size of the stand-in model


# ---- stand-ins ------------------------------------------------------------------------------------------------

class FakeCuda:
    """Device memory as host arrays; pointers are made-up addresses.

    Like CUDA, a context is current per thread: every call checks that the calling thread has it current
    (``activate``), and copies to or from the host check that the host side is page-locked (``host_empty``)."""

    name = "fake-cuda"

    def __init__(self):
        self.blocks = {}
        self.next = 0x1000
        self.freed = []
        self.pinned = []
        self.uploads = []  # destination pointer of every host-to-device copy
        self._local = threading.local()

    @contextmanager
    def activate(self):
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1

    def require_context(self):
        assert getattr(self._local, "depth", 0) > 0, \
            f"no CUDA context current on thread {threading.current_thread().name} (invalid device context)"

    def require_pinned(self, array):
        assert any(np.shares_memory(array, p) for p in self.pinned), "host buffer is pageable, not page-locked"

    def malloc(self, nbytes):
        self.require_context()
        ptr = self.next
        self.blocks[ptr] = np.zeros(max(nbytes, 1), dtype=np.uint8)
        self.next += nbytes + 0x1000
        return ptr

    def free(self, ptr):
        self.require_context()
        self.freed.append(ptr)
        del self.blocks[ptr]

    def host_empty(self, shape, dtype):
        self.require_context()
        array = np.empty(shape, dtype)
        self.pinned.append(array)
        return array

    def host_free(self, array):
        self.require_context()
        self.pinned = [p for p in self.pinned if p is not array]

    def view(self, ptr, nbytes):
        for base, block in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + block.size:
                return block[ptr - base: ptr - base + nbytes]
        raise AssertionError(f"no allocation holds {ptr:#x}+{nbytes}")

    def array(self, ptr, shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.view(ptr, n).view(dtype).reshape(shape)

    def stream(self):
        self.require_context()
        return "stream"

    def stream_handle(self, stream):
        return 7

    def destroy_stream(self, stream):
        self.require_context()

    def htod(self, dst, src, stream):
        self.require_context()
        self.require_pinned(src)
        self.uploads.append(dst)
        self.view(dst, src.nbytes)[:] = np.frombuffer(src.tobytes(), dtype=np.uint8)

    def dtoh(self, dst, src, stream):
        self.require_context()
        self.require_pinned(dst)
        dst.reshape(-1).view(np.uint8)[:] = self.view(src, dst.nbytes)

    def dtod(self, dst, src, nbytes, stream):
        self.require_context()
        self.view(dst, nbytes)[:] = self.view(src, nbytes).copy()

    def synchronize(self, stream):
        self.require_context()

    def close(self):
        raise AssertionError("a caller-given CUDA binding is the caller's to close")


IO = {"embeddings": (["input_ids", "token_type_ids"], ["hidden_states"]),
      "group": (["hidden_states", "attention_mask"], ["layer_output"]),
      "exit": (["hidden_states", "attention_mask"], ["start_logits", "end_logits"]),
      "fused": (["input_ids", "attention_mask", "token_type_ids"], ["start_logits", "end_logits"])}


def fake_math(kind, k, inputs):
    """What each stand-in engine computes (numpy), shared with the reference backend below."""
    if kind == "embeddings":
        ids, types = inputs
        return [np.repeat((ids + 0.5 * types).astype(np.float32)[..., None], H, axis=-1) / 10]
    if kind == "fused":  # k layers, then the last exit head
        ids, mask, types = inputs
        hidden = fake_math("embeddings", 0, [ids, types])[0]
        for _ in range(k):
            hidden = fake_math("group", 0, [hidden, mask])[0]
        return fake_math("exit", k - 1, [hidden, mask])
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

    @property
    def trt10(self):
        return self.trt.__version__.startswith("10.")

    @property
    def device_memory_size_v2(self):
        if not self.trt10:
            raise AttributeError("device_memory_size_v2")  # TensorRT 10.1+
        return self.device_memory_size

    def create_execution_context_without_device_memory(self):
        assert not self.trt10, "deprecated in TensorRT 10: create_execution_context(USER_MANAGED)"
        return self._context()

    def create_execution_context(self, strategy):
        assert self.trt10 and strategy == "USER_MANAGED", f"a context owning its memory ({strategy})"
        return self._context()

    def _context(self):
        self.trt.cuda.require_context()
        ctx = FakeContext10(self) if self.trt10 else FakeContext(self)
        self.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine):
        self.engine = engine
        self.shapes, self.addresses, self.memory, self.calls = {}, {}, None, []

    @property
    def device_memory(self):
        return self.memory[0] if self.memory else None

    @device_memory.setter
    def device_memory(self, ptr):
        assert not self.engine.trt10, "context.device_memory is deprecated in TensorRT 10: set_device_memory(ptr, size)"
        self.memory = (ptr, None)

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
        cuda.require_context()
        e = self.engine
        b, t = self.shapes[e.ins[0]][:2]
        if e.kind in ("embeddings", "fused"):
            inputs = [cuda.array(addresses[n], (b, t), np.int32) for n in e.ins]
        else:
            inputs = [cuda.array(addresses["hidden_states"], (b, t, H), np.float32).copy(),
                      cuda.array(addresses["attention_mask"], (b, t), np.int32)]
        for name, value in zip(e.outs, fake_math(e.kind, e.k, inputs)):
            cuda.array(addresses[name], value.shape, np.float32)[...] = value
        return True


class FakeContext10(FakeContext):
    """TensorRT 10: the caller's memory comes with its size."""

    def set_device_memory(self, ptr, size):
        assert size >= self.engine.device_memory_size, "scratch smaller than the engine needs"
        self.memory = (ptr, size)


def fake_trt(version, cuda):
    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            kind, k = data.decode().split(":")
            return FakeEngine(trt, kind, int(k))

    trt = SimpleNamespace(__version__=version, cuda=cuda, Runtime=Runtime, TensorIOMode=SimpleNamespace(INPUT=1, OUTPUT=2),
                          Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}))
    if version.startswith("10."):
        trt.ExecutionContextAllocationStrategy = SimpleNamespace(STATIC="STATIC", USER_MANAGED="USER_MANAGED")
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
    plans["fused.onnx"] = "fused.plan"
    (root / "fused.plan").write_text(f"fused:{layers}")
    profile = {"max": [max_batch, max_seq, H], "min": [1, 1, H], "opt": [1, max_seq, H]}
    engines = {"plans": plans, "profiles": {"group": {"hidden_states": profile}, "exit": {"hidden_states": profile}}}
    layer_paths = tuple(root / g for g in groups)
    return SimpleNamespace(root=root, engines=engines, embeddings=root / "embeddings.onnx", layers=layer_paths,
                           group_files=tuple(dict.fromkeys(layer_paths)), exits=tuple(root / f"exit{i}.onnx" for i in range(layers)),
                           num_layers=layers, hidden_size=H, max_seq_length=max_seq, fused=root / "fused.onnx")


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


def forward(backend, ids, mask, layers=3):
    """embed, then every layer and exit head, as the runtime does for a batch that does not shrink."""
    hidden = backend.embed(ids, np.zeros_like(ids))
    out = []
    for slot in range(layers):
        hidden = backend.run_layer(slot, hidden, mask)
        out.append(backend.run_exit(slot, hidden, mask))
    return out


def test_a_backend_opened_on_one_thread_answers_from_another(backend):
    """elma-serve answers in a thread pool: every call must make the CUDA context current on its own thread."""
    ids = np.arange(20, dtype=np.int32).reshape(2, 10) % 7
    mask = np.ones_like(ids)
    here = forward(backend, ids, mask)
    with ThreadPoolExecutor(max_workers=2) as pool:
        there = pool.submit(forward, backend, ids, mask).result()
        fused = pool.submit(backend.run_fused, ids, mask, np.zeros_like(ids)).result()
    for (a, b), (c, d) in zip(here, there):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    np.testing.assert_allclose(fused[0], here[-1][0], rtol=1e-6)


def test_tensorrt_10_hands_contexts_memory_with_its_size(tmp_path):
    cuda = FakeCuda()
    be = TensorRTBackend(fake_bundle(tmp_path), trt=fake_trt("10.3.0", cuda), cuda=cuda, check_target=False)
    runners = [be._embed, *be._layers, *be._exits]
    assert all(isinstance(r.context, FakeContext10) for r in runners)
    assert {r.context.memory for r in runners} == {(be._scratch, max(r.device_memory_size for r in runners))}
    be.close()


def test_tensorrt_11_is_refused_with_what_to_do(tmp_path):
    cuda = FakeCuda()
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT 11.0.0 is not supported.*TensorRT 10"):
        TensorRTBackend(fake_bundle(tmp_path), trt=fake_trt("11.0.0", cuda), cuda=cuda, check_target=False)
    assert not cuda.blocks, "nothing allocated before the refusal"


def test_fused_plan_is_the_full_depth_baseline(backend):
    ref = NumpyReference(3)
    ids = np.arange(30, dtype=np.int32).reshape(3, 10) % 11
    types = (np.arange(10) > 3).astype(np.int32)[None].repeat(3, 0)
    mask = np.ones_like(ids)
    mask[2, 6:] = 0
    assert backend.runner_count == 5, "fused.plan is loaded on first use, not with the per-layer engines"
    start, end = backend.run_fused(ids, mask, types)
    hidden = ref.embed(ids, types)
    for slot in range(3):
        hidden = ref.run_layer(slot, hidden, mask)
    want_s, want_e = ref.run_exit(2, hidden, mask)
    np.testing.assert_allclose(start, want_s, rtol=1e-6)
    np.testing.assert_allclose(end, want_e, rtol=1e-6)
    assert backend.runner_count == 6 and backend._fused.context.device_memory is not None
    with pytest.raises(ValueError, match="exceeds"):
        backend.run_fused(np.zeros((9, 4), np.int32), np.ones((9, 4), np.int32), np.zeros((9, 4), np.int32))


def test_fused_without_a_plan_says_to_rebuild(tmp_path):
    cuda = FakeCuda()
    bundle = fake_bundle(tmp_path)
    bundle.engines["plans"].pop("fused.onnx")
    be = TensorRTBackend(bundle, trt=fake_trt("8.6.2", cuda), cuda=cuda, check_target=False)
    ids = np.ones((1, 4), np.int32)
    with pytest.raises(BundleError, match="no engine for fused.onnx; rebuild"):
        be.run_fused(ids, ids, ids)
    be.close()


def test_the_mask_goes_up_once_per_batch_not_per_layer_and_head(backend):
    ids = np.arange(20, dtype=np.int32).reshape(2, 10) % 5
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    backend.cuda.uploads.clear()
    forward(backend, ids, mask.astype(np.int64))  # an int64 mask equal to the one on the device is not re-sent
    assert backend.cuda.uploads.count(backend._mask) == 1, "3 layers and 3 heads: one mask upload"
    hidden = backend.embed(ids, np.zeros_like(ids))
    kept = backend.select_rows(hidden, [1], 10)
    backend.run_layer(0, kept, mask[[1]])
    assert backend.cuda.uploads.count(backend._mask) == 2, "a shrunk batch has another mask: sent again"
    other = mask.copy()
    other[0, 9] = 0
    forward(backend, ids, other)
    assert backend.cuda.uploads.count(backend._mask) == 3, "same shape, other content: sent again"


def test_host_buffers_are_page_locked_and_reused(backend):
    ids = np.ones((2, 10), np.int32)
    pinned_before = len(backend.cuda.pinned)
    (s1, _), = forward(backend, ids, ids, layers=1)
    (s2, _), = forward(backend, ids * 2, ids, layers=1)
    assert len(backend.cuda.pinned) == pinned_before == 5, "ids, types, mask, start, end: allocated once"
    assert not any(np.shares_memory(s1, p) for p in backend.cuda.pinned), "results are copies, not the mirrors"
    assert not np.array_equal(s1, s2)
    backend.close()
    assert not backend_pinned_left(backend)


def backend_pinned_left(backend):
    return [] if backend.cuda is None else backend.cuda.pinned


# ---- the real CUDA bindings' context handling, with stand-in modules ----------------------------------------

class FakeDriverContext:
    """pycuda.driver.Context: a per-thread stack, as the CUDA driver keeps it."""

    stacks = threading.local()

    @classmethod
    def stack(cls):
        if not hasattr(cls.stacks, "items"):
            cls.stacks.items = []
        return cls.stacks.items

    def push(self):
        self.stack().append(self)

    @classmethod
    def pop(cls):
        assert cls.stack(), "pop with no context current on this thread"
        return cls.stack().pop()

    def detach(self):
        self.detached = True


def fake_pycuda(monkeypatch):
    """``pycuda``, ``pycuda.driver`` and ``pycuda.autoinit`` stand-ins: autoinit makes a context current on the
    importing thread only (as the real one does); every driver call needs a context current on its thread."""
    import sys
    import types

    FakeDriverContext.stacks = threading.local()
    drv = types.ModuleType("pycuda.driver")

    def need():
        if not FakeDriverContext.stack():
            raise RuntimeError("cuMemAlloc failed: invalid device context")

    class Device:
        def __init__(self, n):
            self.n = n

        def retain_primary_context(self):
            return FakeDriverContext()

        def make_context(self):
            ctx = FakeDriverContext()
            ctx.push()
            return ctx

    class Allocation(int):
        def free(self):
            need()

    drv.init = lambda: None
    drv.Device, drv.Context = Device, FakeDriverContext
    drv.mem_alloc = lambda n: (need(), Allocation(0x100))[1]
    drv.pagelocked_empty = lambda shape, dtype: (need(), np.empty(shape, dtype))[1]
    drv.memcpy_htod_async = lambda dst, src, stream: need()
    autoinit = types.ModuleType("pycuda.autoinit")
    autoinit.context = Device(0).make_context()  # what `import pycuda.autoinit` does: current on this thread only
    pkg = types.ModuleType("pycuda")
    pkg.driver, pkg.autoinit = drv, autoinit
    for name, mod in (("pycuda", pkg), ("pycuda.driver", drv), ("pycuda.autoinit", autoinit)):
        monkeypatch.setitem(sys.modules, name, mod)
    FakeDriverContext.stack().clear()  # the importing thread of the real module would keep it; tests start clean


def test_pycuda_pushes_its_context_on_the_calling_thread(monkeypatch):
    from elma.runtime.cuda_api import PyCuda

    fake_pycuda(monkeypatch)
    api = PyCuda()

    def work():
        with api.activate():
            ptr = api.malloc(64)
            api.htod(ptr, api.host_empty((4,), np.int32), None)
            api.free(ptr)
        return len(FakeDriverContext.stack())

    assert work() == 0, "popped again after the call"
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(work).result() == 0
        with pytest.raises(RuntimeError, match="invalid device context"):
            pool.submit(api.malloc, 64).result()  # outside activate(): no context on a pool thread
    api.close()
    assert api.context is None


def test_cuda_python_sets_its_device_on_the_calling_thread(monkeypatch):
    """The CUDA runtime's current device is per host thread: a pool thread starts on device 0."""
    import sys
    import types

    current = threading.local()
    rt = types.ModuleType("cuda.bindings.runtime")

    def set_device(n):
        current.device = n
        return (0,)

    def malloc(n):
        return (0, 0x2000) if getattr(current, "device", 0) == 1 else (SimpleNamespace(value=101, name="wrong device"), 0)

    rt.cudaSetDevice, rt.cudaMalloc, rt.cudaFree = set_device, malloc, lambda ptr: (0,)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda_pkg = types.ModuleType("cuda")
    cuda_pkg.bindings = bindings
    for name, mod in (("cuda", cuda_pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, mod)
    from elma.runtime.cuda_api import CudaPython

    api = CudaPython(device=1)

    def work():
        with api.activate():
            return api.malloc(16)

    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(EngineLoadError, match="wrong device"):
            pool.submit(api.malloc, 16).result()  # outside activate(): a fresh thread is on device 0
        assert pool.submit(work).result() == 0x2000


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
