"""TensorRT backend: the engines ``elma build-engines`` wrote into a bundle, run one layer at a time.

Written from NVIDIA's documented Python API (shared/JETSON-NOTES.md, section 4;
https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration-guide.html):

* TensorRT 8.5+ (JetPack 5.1, 6.x): name-based tensors, ``set_input_shape``, ``set_tensor_address``,
  ``execute_async_v3``; TensorRT 8.0-8.4 (JetPack 4.6): bindings, ``set_binding_shape``, ``execute_async_v2``.
  ``elma.runtime.trt_compat.trt_features`` decides which from the version (and refuses TensorRT 11+).
* One execution context per engine, created once and *without* its own activation memory: the
  contexts run one after another on one stream, so they share one scratch buffer of the largest
  ``device_memory_size`` (pattern of NVIDIA/TensorRT#3276). TensorRT 10 creates such a context with
  ``create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED)`` and hands it the buffer
  with ``set_device_memory(ptr, size)``; ``create_execution_context_without_device_memory()`` and the
  ``device_memory`` attribute are what 8.x has (deprecated in 10).
* Buffers are allocated once, at the engines' largest profile shape: ids/types/mask, two ping-pong
  hidden-state buffers (ALBERT's one group engine reads and writes them in turn), and the start/end
  logits, with page-locked host mirrors for what crosses the bus. The hidden state stays on the GPU
  between layers; only the logits come back for the exit decision. Rows that exit are dropped on the
  GPU (``select_rows``: one device-to-device copy per remaining row). The attention mask goes up once
  per batch: a layer or exit head whose mask equals the one already on the GPU copies nothing.
* ``run_fused`` runs ``fused.plan`` (the full-depth baseline), loaded on its first use.
* Every call runs with the CUDA context current on the *calling* thread (``elma.runtime.cuda_api``),
  so a backend opened on one thread answers from another (``elma-serve``'s thread pool).

``tensorrt`` and the CUDA binding are imported when a backend is created, never at module
import. A ``TensorRTBackend`` is not thread-safe (one stream, shared scratch memory); the
runtime serialises whole questions on it (``thread_safe = False``). No CUDA graph capture yet.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from elma.errors import BundleError, EngineLoadError
from elma.runtime.backends import Backend
from elma.runtime.cuda_api import cuda_call, open_cuda  # noqa: F401  (cuda_call: part of this module's API)
from elma.runtime.trt_compat import check_engine_compat, current_engine_target, import_tensorrt, trt_features

logger = logging.getLogger(__name__)

FLOAT32_BYTES = 4
INT32_BYTES = 4


@dataclass(frozen=True)
class DeviceHidden:
    """A (batch, seq, hidden) float32 hidden state living in a GPU buffer."""

    ptr: int
    batch: int
    seq: int
    hidden: int

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.batch, self.seq, self.hidden)

    @property
    def row_bytes(self) -> int:
        return self.seq * self.hidden * FLOAT32_BYTES


def max_shape(profiles: Mapping[str, Any], kinds: Sequence[str] = ("embeddings", "group", "exit")) -> Optional[Tuple[int, int]]:
    """(batch, seq) that every engine of ``kinds`` accepts, from the profiles ``elma build-engines`` recorded
    (``{kind: {input: {"min": [..], "opt": [..], "max": [..]}}}``); None when none is recorded."""
    tops = [shape["max"] for kind in kinds for shape in ((profiles or {}).get(kind) or {}).values()
            if isinstance(shape, dict) and shape.get("max") and len(shape["max"]) >= 2]
    if not tops:
        return None
    return min(int(t[0]) for t in tops), min(int(t[1]) for t in tops)



def create_context_without_memory(trt, engine):
    """An execution context that owns no activation memory (the caller supplies it).

    TensorRT 10 offers ``create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED)`` and
    deprecates ``create_execution_context_without_device_memory()``, which 8.x needs.
    """
    strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
    if strategy is not None:
        return engine.create_execution_context(strategy.USER_MANAGED)
    return engine.create_execution_context_without_device_memory()


class EngineRunner:
    """One engine and its execution context (no own device memory), run with caller-given device addresses.

    Args:
        trt: the tensorrt module.
        engine: a deserialised ``ICudaEngine``.
        io_api: "tensors" (8.5+) or "bindings" (8.0-8.4).
        name: for messages.
    """

    def __init__(self, trt, engine, io_api: str, name: str):
        self.trt = trt
        self.engine = engine
        self.io_api = io_api
        self.name = name
        self.context = create_context_without_memory(trt, engine)
        if self.context is None:
            raise EngineLoadError(f"{name}: TensorRT could not create an execution context (out of GPU memory?)")
        if io_api == "tensors":
            self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        else:
            self.names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
            self.inputs = [n for i, n in enumerate(self.names) if engine.binding_is_input(i)]

    @property
    def device_memory_size(self) -> int:
        size = getattr(self.engine, "device_memory_size_v2", None)  # 10.1+; device_memory_size is gone in 11
        return int(size if size is not None else self.engine.device_memory_size)

    def set_device_memory(self, ptr: int, size: int) -> None:
        """Hand the context ``size`` bytes of activation memory at ``ptr`` (at least ``device_memory_size``)."""
        if size < self.device_memory_size:
            raise EngineLoadError(f"{self.name}: scratch of {size} bytes is below the engine's {self.device_memory_size}")
        if hasattr(self.context, "set_device_memory"):  # TensorRT 10: the size lets TensorRT check the buffer
            self.context.set_device_memory(ptr, size)
        else:  # 8.x
            self.context.device_memory = ptr

    def run(self, addresses: Mapping[str, int], input_shapes: Mapping[str, Tuple[int, ...]], stream_handle: int) -> None:
        """Enqueue one run: every I/O tensor at ``addresses[name]``, inputs shaped by ``input_shapes``."""
        missing = [n for n in self.names if n not in addresses]
        if missing:
            raise EngineLoadError(f"{self.name}: no buffer for tensor(s) {', '.join(missing)}; rebuild the engines")
        if self.io_api == "tensors":
            for n in self.inputs:
                if not self.context.set_input_shape(n, tuple(input_shapes[n])):
                    raise EngineLoadError(f"{self.name}: input {n} shape {tuple(input_shapes[n])} is outside the "
                                          f"engine's profile; rebuild with a larger --max-batch")
            for n in self.names:
                self.context.set_tensor_address(n, int(addresses[n]))
            ok = self.context.execute_async_v3(stream_handle=stream_handle)
        else:
            for n in self.inputs:
                if not self.context.set_binding_shape(self.names.index(n), tuple(input_shapes[n])):
                    raise EngineLoadError(f"{self.name}: input {n} shape {tuple(input_shapes[n])} is outside the "
                                          f"engine's profile; rebuild with a larger --max-batch")
            ok = self.context.execute_async_v2(bindings=[int(addresses[n]) for n in self.names],
                                               stream_handle=stream_handle)
        if not ok:
            raise EngineLoadError(f"{self.name}: TensorRT failed to enqueue the engine")


class TensorRTBackend(Backend):
    """The bundle's TensorRT engines; see the module docstring.

    Args:
        bundle: a loaded ``Bundle`` with ``engines`` (after ``elma build-engines``).
        max_batch: rows allocated for (default: the engines' profile maximum).
        trt, cuda: stand-ins for tests; default ``import tensorrt`` and ``open_cuda()``.
        check_target: refuse engines built for another TensorRT version or GPU.
    """

    name = "tensorrt"
    thread_safe = False

    def __init__(self, bundle, max_batch: Optional[int] = None, trt=None, cuda=None, check_target: bool = True):
        self._buffers: List[int] = []
        self._host: List[np.ndarray] = []
        self._stream = None
        self.cuda = None
        self._owns_cuda = cuda is None
        if not bundle.engines:
            raise BundleError(f"{bundle.root}: no TensorRT engines; build them on this machine with "
                              f"`elma build-engines {bundle.root}` (or use --backend onnxruntime)")
        self.trt = trt if trt is not None else import_tensorrt()
        self._io_api = trt_features(self.trt.__version__).io_api  # refuses TensorRT < 8 and >= 11 first
        if check_target:
            check_engine_compat(bundle.engines, current_engine_target(), bundle.root)
        self.cuda = cuda if cuda is not None else open_cuda()
        self.bundle = bundle
        self.num_layers = bundle.num_layers
        self.hidden_size = bundle.hidden_size
        self._plans: Mapping[str, str] = bundle.engines.get("plans") or {}
        self._fused: Optional[EngineRunner] = None
        self._pending: set = set()  # host mirrors an un-synchronised upload still reads
        self._mask_shape: Optional[Tuple[int, int]] = None  # what the device mask buffer holds now
        try:
            with self.cuda.activate():
                self._open(bundle, max_batch)
        except BaseException:
            self.close()
            raise
        logger.info("tensorrt %s (%s API): %d engines for %d slots, buffers for %dx%d tokens", self.trt.__version__,
                    self._io_api, self.runner_count, self.num_layers, self.max_batch, self.max_seq)

    def _load(self, onnx_name: str) -> EngineRunner:
        plan = self._plans.get(onnx_name)
        if plan is None:
            raise BundleError(f"{self.bundle.root}: no engine for {onnx_name}; rebuild with "
                              f"`elma build-engines {self.bundle.root}`")
        engine = self._runtime.deserialize_cuda_engine((self.bundle.root / plan).read_bytes())
        if engine is None:
            raise EngineLoadError(f"{self.bundle.root / plan}: TensorRT cannot deserialise it; rebuild with "
                                  f"`elma build-engines {self.bundle.root}`")
        return EngineRunner(self.trt, engine, self._io_api, plan)

    def _open(self, bundle, max_batch: Optional[int]) -> None:
        self._runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        runners: Dict[Path, EngineRunner] = {}
        for path in [bundle.embeddings, *bundle.group_files, *bundle.exits]:
            if path not in runners:
                runners[path] = self._load(path.name)
        self._embed = runners[bundle.embeddings]
        self._layers = [runners[p] for p in bundle.layers]
        self._exits = [runners[p] for p in bundle.exits]
        self.runner_count = len(runners)
        profiles = bundle.engines.get("profiles") or {}
        batch, seq = max_shape(profiles) or (1, bundle.max_seq_length)
        self.max_batch = int(max_batch or batch)
        self.max_seq = int(seq)
        self._stream = self.cuda.stream()
        self._stream_handle = self.cuda.stream_handle(self._stream)
        self._scratch_size = max(1, max(r.device_memory_size for r in runners.values()))
        self._scratch = self._alloc(self._scratch_size)
        for r in runners.values():
            r.set_device_memory(self._scratch, self._scratch_size)  # sequential on one stream: one scratch for all
        tokens = self.max_batch * self.max_seq
        self._ids, self._types, self._mask = (self._alloc(tokens * INT32_BYTES) for _ in range(3))
        self._hidden = [self._alloc(tokens * self.hidden_size * FLOAT32_BYTES) for _ in range(2)]  # ping-pong
        self._start, self._end = self._alloc(tokens * FLOAT32_BYTES), self._alloc(tokens * FLOAT32_BYTES)
        # page-locked host mirrors, flat; a (B, T) batch uses the first B*T entries
        self._host_in = {name: self._host_empty(tokens, np.int32) for name in ("ids", "types", "mask")}
        self._host_out = [self._host_empty(tokens, np.float32) for _ in range(2)]

    def _alloc(self, nbytes: int) -> int:
        ptr = self.cuda.malloc(nbytes)
        self._buffers.append(ptr)
        return ptr

    def _host_empty(self, n: int, dtype) -> np.ndarray:
        array = self.cuda.host_empty((n,), dtype)
        self._host.append(array)
        return array

    def _check(self, batch: int, seq: int) -> None:
        if batch > self.max_batch or seq > self.max_seq:
            raise ValueError(f"batch {batch}x{seq} tokens exceeds the engines' {self.max_batch}x{self.max_seq}; "
                             f"ask fewer questions at once or rebuild with `elma build-engines --max-batch`")

    def _other(self, ptr: int) -> int:
        return self._hidden[1] if ptr == self._hidden[0] else self._hidden[0]

    def _sync(self) -> None:
        self.cuda.synchronize(self._stream)
        self._pending.clear()

    def _upload(self, name: str, dst: int, array: np.ndarray) -> None:
        """Copy ``array`` (int32) to ``dst`` through its page-locked mirror."""
        if name in self._pending:  # an earlier upload may still read the mirror: wait before overwriting it
            self._sync()
        flat = np.ascontiguousarray(array, dtype=np.int32).reshape(-1)
        staged = self._host_in[name][:flat.size]
        staged[:] = flat
        self.cuda.htod(dst, staged, self._stream)
        self._pending.add(name)

    def _upload_mask(self, attention_mask: np.ndarray) -> None:
        """Upload the mask unless the device buffer already holds exactly this mask (once per batch, not per step)."""
        mask = np.asarray(attention_mask)
        shape = tuple(mask.shape)
        if shape == self._mask_shape and np.array_equal(self._host_in["mask"][:mask.size], mask.reshape(-1)):
            return
        self._mask_shape = None  # unknown until the copy is enqueued
        self._upload("mask", self._mask, mask)
        self._mask_shape = shape

    def _download_logits(self, batch: int, seq: int) -> Tuple[np.ndarray, np.ndarray]:
        n = batch * seq
        start, end = (h[:n] for h in self._host_out)
        self.cuda.dtoh(start, self._start, self._stream)
        self.cuda.dtoh(end, self._end, self._stream)
        self._sync()
        return start.reshape(batch, seq).copy(), end.reshape(batch, seq).copy()  # the mirrors are reused

    def embed(self, input_ids, token_type_ids) -> DeviceHidden:
        batch, seq = input_ids.shape
        self._check(batch, seq)
        with self.cuda.activate():
            self._upload("ids", self._ids, input_ids)
            self._upload("types", self._types, token_type_ids)
            out = self._hidden[0]
            self._embed.run({"input_ids": self._ids, "token_type_ids": self._types, "hidden_states": out},
                            {"input_ids": (batch, seq), "token_type_ids": (batch, seq)}, self._stream_handle)
        return DeviceHidden(out, batch, seq, self.hidden_size)

    def run_layer(self, slot, hidden: DeviceHidden, attention_mask) -> DeviceHidden:
        out = self._other(hidden.ptr)
        shapes = {"hidden_states": hidden.shape, "attention_mask": (hidden.batch, hidden.seq)}
        with self.cuda.activate():
            self._upload_mask(attention_mask)
            self._layers[slot].run({"hidden_states": hidden.ptr, "attention_mask": self._mask, "layer_output": out},
                                   shapes, self._stream_handle)
        return DeviceHidden(out, hidden.batch, hidden.seq, hidden.hidden)

    def run_exit(self, slot, hidden: DeviceHidden, attention_mask) -> Tuple[np.ndarray, np.ndarray]:
        shapes = {"hidden_states": hidden.shape, "attention_mask": (hidden.batch, hidden.seq)}
        with self.cuda.activate():
            self._upload_mask(attention_mask)  # a no-op after run_layer of the same batch
            self._exits[slot].run({"hidden_states": hidden.ptr, "attention_mask": self._mask,
                                   "start_logits": self._start, "end_logits": self._end}, shapes, self._stream_handle)
            return self._download_logits(hidden.batch, hidden.seq)

    def run_fused(self, input_ids, attention_mask, token_type_ids) -> Tuple[np.ndarray, np.ndarray]:
        """The full-depth baseline: ``fused.plan`` (embeddings, every layer, the last exit head) in one engine.

        Args:
            input_ids, attention_mask, token_type_ids: (B, T) integer arrays.

        Returns:
            (start_logits, end_logits), each (B, T) float32.

        Raises:
            BundleError: the bundle's engines include no ``fused.plan`` (rebuild them).
            ValueError: the batch exceeds the engines' profile.
        """
        batch, seq = input_ids.shape
        self._check(batch, seq)
        with self.cuda.activate():
            if self._fused is None:
                self._fused = self._load(self.bundle.fused.name)
                self.runner_count += 1
                size = self._fused.device_memory_size
                if size > self._scratch_size:  # the whole model in one engine may need more than one layer
                    self._fused_scratch = self._alloc(size)
                    self._fused.set_device_memory(self._fused_scratch, size)
                else:
                    self._fused.set_device_memory(self._scratch, self._scratch_size)
            self._upload("ids", self._ids, input_ids)
            self._upload("types", self._types, token_type_ids)
            self._upload_mask(attention_mask)
            shapes = {"input_ids": (batch, seq), "attention_mask": (batch, seq), "token_type_ids": (batch, seq)}
            self._fused.run({"input_ids": self._ids, "attention_mask": self._mask, "token_type_ids": self._types,
                             "start_logits": self._start, "end_logits": self._end}, shapes, self._stream_handle)
            return self._download_logits(batch, seq)

    def select_rows(self, hidden: DeviceHidden, rows: Sequence[int], width: int) -> DeviceHidden:
        """Keep ``rows`` and the first ``width`` tokens, on the GPU (into the other ping-pong buffer)."""
        out = self._other(hidden.ptr)
        new_row_bytes = width * hidden.hidden * FLOAT32_BYTES
        with self.cuda.activate():
            for j, i in enumerate(rows):
                self.cuda.dtod(out + j * new_row_bytes, hidden.ptr + int(i) * hidden.row_bytes, new_row_bytes,
                               self._stream)
        return DeviceHidden(out, len(rows), width, hidden.hidden)

    def select_tokens(self, hidden: DeviceHidden, rows: Sequence[int], index) -> DeviceHidden:
        """Keep ``rows`` and in row j the tokens ``index[j]`` (skimming), on the GPU into the other ping-pong buffer.

        No host round trip and no kernel: kept tokens come in runs (the question, the regions around candidate
        spans, the padding slots of ``gather_index``), and each run is one device-to-device copy.
        """
        from elma.runtime.skim import copy_runs

        index = np.asarray(index)
        if index.ndim != 2 or index.shape[0] != len(rows) or index.size and (index.min() < 0 or index.max() >= hidden.seq):
            raise ValueError(f"token index {index.shape} does not fit {len(rows)} rows of {hidden.seq} tokens")
        out = self._other(hidden.ptr)
        width = index.shape[1]
        token_bytes = hidden.hidden * FLOAT32_BYTES
        with self.cuda.activate():
            for j, i in enumerate(rows):
                src_row = hidden.ptr + int(i) * hidden.row_bytes
                dst_row = out + j * width * token_bytes
                for dst, src, count in copy_runs(index[j]):
                    self.cuda.dtod(dst_row + dst * token_bytes, src_row + src * token_bytes, count * token_bytes,
                                   self._stream)
        return DeviceHidden(out, len(rows), width, hidden.hidden)

    def describe(self) -> str:
        return f"tensorrt {self.trt.__version__} ({getattr(self.cuda, 'name', 'cuda')})"

    def close(self) -> None:
        if self.cuda is None:
            return
        with self.cuda.activate():
            if self._stream is not None:
                self._sync()
            # contexts and engines go first, while the CUDA context is current (TensorRT frees on destruction)
            self._embed, self._layers, self._exits, self._fused, self._runtime = None, [], [], None, None
            while self._buffers:
                self.cuda.free(self._buffers.pop())
            while self._host:
                self.cuda.host_free(self._host.pop())
            if self._stream is not None:
                self.cuda.destroy_stream(self._stream)
                self._stream = None
        if self._owns_cuda:
            self.cuda.close()
        self.cuda = None
