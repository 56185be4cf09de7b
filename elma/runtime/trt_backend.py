"""TensorRT backend: the engines ``elma build-engines`` wrote into a bundle, run one layer at a time.

Written from NVIDIA's documented Python API (shared/JETSON-NOTES.md, section 4;
https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration-guide.html):

* TensorRT 8.5+ (JetPack 5.1, 6.x): name-based tensors, ``set_input_shape``, ``set_tensor_address``,
  ``execute_async_v3``; TensorRT 8.0-8.4 (JetPack 4.6): bindings, ``set_binding_shape``, ``execute_async_v2``.
  ``elma.runtime.trt_compat.trt_features`` decides which from the version.
* One execution context per engine, created once and created *without* device memory: the
  contexts run one after another on one stream, so they share one activation scratch buffer
  of the largest ``device_memory_size`` (pattern of NVIDIA/TensorRT#3276).
* Buffers are allocated once, at the engines' largest profile shape: ids/types/mask, two
  ping-pong hidden-state buffers (ALBERT's one group engine reads and writes them in turn),
  and the start/end logits. The hidden state stays on the GPU between layers; only the
  logits come back to the host for the exit decision. Rows that exit are dropped on the GPU
  (``select_rows``: one device-to-device copy per remaining row).
* Every CUDA status goes through ``cuda_call`` (cuda-python returns ``(err, value)`` tuples).

``tensorrt`` and the CUDA binding are imported when a backend is created, never at module
import. A ``TensorRTBackend`` is not thread-safe (one stream, shared scratch memory); the
runtime serialises whole questions on it (``thread_safe = False``).

Simplifications left for later: host buffers are ordinary (pageable) numpy arrays rather than
page-locked memory, and no CUDA graph capture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from elma.errors import BundleError, EngineLoadError
from elma.runtime.backends import Backend
from elma.runtime.trt_compat import check_engine_compat, current_engine_target, import_tensorrt, trt_features

logger = logging.getLogger(__name__)

FLOAT32_BYTES = 4
INT32_BYTES = 4


def cuda_call(result: Any) -> Any:
    """Check a cuda-python call's status; return its value(s).

    cuda-python calls return ``(err,)`` or ``(err, value, ...)``; ``err`` is a ``cudaError_t`` whose int
    value is 0 on success (the ``cuda_call`` of NVIDIA/TensorRT samples/python/common_runtime.py).

    Raises:
        EngineLoadError: naming the CUDA error.
    """
    if isinstance(result, tuple):
        err, rest = result[0], result[1:]
    else:
        err, rest = result, ()
    code = int(getattr(err, "value", err))
    if code != 0:
        name = getattr(err, "name", f"cudaError {code}")
        raise EngineLoadError(f"CUDA call failed: {name} ({code}); check the GPU with `nvidia-smi`/`tegrastats` "
                              f"and that no other process holds its memory")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


class CudaPython:
    """The few CUDA runtime calls the backend needs, through cuda-python (``cudart``)."""

    name = "cuda-python"

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart  # cuda-python 12.6+
        except ImportError:
            from cuda import cudart  # older cuda-python
        self.cudart = cudart

    def malloc(self, nbytes: int) -> int:
        return int(cuda_call(self.cudart.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        cuda_call(self.cudart.cudaFree(ptr))

    def stream(self) -> Any:
        return cuda_call(self.cudart.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def destroy_stream(self, stream: Any) -> None:
        cuda_call(self.cudart.cudaStreamDestroy(stream))

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_call(self.cudart.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(self.cudart.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def dtod(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        cuda_call(self.cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream))

    def synchronize(self, stream: Any) -> None:
        cuda_call(self.cudart.cudaStreamSynchronize(stream))


class PyCuda:
    """The same calls through pycuda (JetPack 4.6 images ship it); errors surface as pycuda exceptions."""

    name = "pycuda"

    def __init__(self):
        import pycuda.autoinit  # noqa: F401  (creates the context on device 0)
        import pycuda.driver as cuda

        self.cuda = cuda
        self._allocations: Dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(max(int(nbytes), 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def destroy_stream(self, stream: Any) -> None:
        pass

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def dtod(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.cuda.memcpy_dtod_async(dst, src, nbytes, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()


def open_cuda():
    """cuda-python if it imports, else pycuda."""
    errors = []
    for api in (CudaPython, PyCuda):
        try:
            return api()
        except ImportError as err:
            errors.append(f"{api.name}: {err}")
    raise EngineLoadError("the tensorrt backend needs cuda-python (`pip install cuda-python`) or pycuda "
                          f"({'; '.join(errors)})")


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
        self.context = engine.create_execution_context_without_device_memory()
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
        size = getattr(self.engine, "device_memory_size_v2", None)  # 10.x
        return int(size if size is not None else self.engine.device_memory_size)

    def set_device_memory(self, ptr: int) -> None:
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
        self._stream = None
        self.cuda = None
        if not bundle.engines:
            raise BundleError(f"{bundle.root}: no TensorRT engines; build them on this machine with "
                              f"`elma build-engines {bundle.root}` (or use --backend onnxruntime)")
        self.trt = trt if trt is not None else import_tensorrt()
        if check_target:
            check_engine_compat(bundle.engines, current_engine_target(), bundle.root)
        self.cuda = cuda if cuda is not None else open_cuda()
        self.bundle = bundle
        self.num_layers = bundle.num_layers
        self.hidden_size = bundle.hidden_size
        io_api = trt_features(self.trt.__version__).io_api
        plans: Mapping[str, str] = bundle.engines.get("plans") or {}
        trt_logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(trt_logger)
        runners: Dict[Path, EngineRunner] = {}
        for path in [bundle.embeddings, *bundle.group_files, *bundle.exits]:
            if path in runners:
                continue
            plan = plans.get(path.name)
            if plan is None:
                raise BundleError(f"{bundle.root}: no engine for {path.name}; rebuild with `elma build-engines {bundle.root}`")
            engine = self._runtime.deserialize_cuda_engine((bundle.root / plan).read_bytes())
            if engine is None:
                raise EngineLoadError(f"{bundle.root / plan}: TensorRT cannot deserialise it; rebuild with "
                                      f"`elma build-engines {bundle.root}`")
            runners[path] = EngineRunner(self.trt, engine, io_api, plan)
        self._embed = runners[bundle.embeddings]
        self._layers = [runners[p] for p in bundle.layers]
        self._exits = [runners[p] for p in bundle.exits]
        self.runner_count = len(runners)
        profiles = bundle.engines.get("profiles") or {}
        batch, seq = max_shape(profiles) or (1, bundle.max_seq_length)
        self.max_batch = int(max_batch or batch)
        self.max_seq = int(seq)
        try:
            self._stream = self.cuda.stream()
            self._stream_handle = self.cuda.stream_handle(self._stream)
            scratch = self._alloc(max(r.device_memory_size for r in runners.values()))
            for r in runners.values():
                r.set_device_memory(scratch)  # sequential on one stream: one scratch for all contexts
            tokens = self.max_batch * self.max_seq
            self._ids, self._types, self._mask = (self._alloc(tokens * INT32_BYTES) for _ in range(3))
            self._hidden = [self._alloc(tokens * self.hidden_size * FLOAT32_BYTES) for _ in range(2)]  # ping-pong
            self._start, self._end = self._alloc(tokens * FLOAT32_BYTES), self._alloc(tokens * FLOAT32_BYTES)
        except BaseException:
            self.close()
            raise
        logger.info("tensorrt %s (%s API): %d engines for %d slots, buffers for %dx%d tokens", self.trt.__version__, io_api,
                    self.runner_count, self.num_layers, self.max_batch, self.max_seq)

    def _alloc(self, nbytes: int) -> int:
        ptr = self.cuda.malloc(nbytes)
        self._buffers.append(ptr)
        return ptr

    def _check(self, batch: int, seq: int) -> None:
        if batch > self.max_batch or seq > self.max_seq:
            raise ValueError(f"batch {batch}x{seq} tokens exceeds the engines' {self.max_batch}x{self.max_seq}; "
                             f"ask fewer questions at once or rebuild with `elma build-engines --max-batch`")

    def _other(self, ptr: int) -> int:
        return self._hidden[1] if ptr == self._hidden[0] else self._hidden[0]

    def _upload_mask(self, attention_mask: np.ndarray) -> None:
        self.cuda.htod(self._mask, np.ascontiguousarray(attention_mask, dtype=np.int32), self._stream)

    def embed(self, input_ids, token_type_ids) -> DeviceHidden:
        batch, seq = input_ids.shape
        self._check(batch, seq)
        self.cuda.htod(self._ids, np.ascontiguousarray(input_ids, dtype=np.int32), self._stream)
        self.cuda.htod(self._types, np.ascontiguousarray(token_type_ids, dtype=np.int32), self._stream)
        out = self._hidden[0]
        self._embed.run({"input_ids": self._ids, "token_type_ids": self._types, "hidden_states": out},
                        {"input_ids": (batch, seq), "token_type_ids": (batch, seq)}, self._stream_handle)
        return DeviceHidden(out, batch, seq, self.hidden_size)

    def run_layer(self, slot, hidden: DeviceHidden, attention_mask) -> DeviceHidden:
        self._upload_mask(attention_mask)
        out = self._other(hidden.ptr)
        shapes = {"hidden_states": hidden.shape, "attention_mask": (hidden.batch, hidden.seq)}
        self._layers[slot].run({"hidden_states": hidden.ptr, "attention_mask": self._mask, "layer_output": out}, shapes,
                               self._stream_handle)
        return DeviceHidden(out, hidden.batch, hidden.seq, hidden.hidden)

    def run_exit(self, slot, hidden: DeviceHidden, attention_mask) -> Tuple[np.ndarray, np.ndarray]:
        # The mask of this step was uploaded by run_layer; upload again in case a caller runs an exit on its own.
        self._upload_mask(attention_mask)
        shapes = {"hidden_states": hidden.shape, "attention_mask": (hidden.batch, hidden.seq)}
        self._exits[slot].run({"hidden_states": hidden.ptr, "attention_mask": self._mask, "start_logits": self._start,
                               "end_logits": self._end}, shapes, self._stream_handle)
        start = np.empty((hidden.batch, hidden.seq), dtype=np.float32)
        end = np.empty((hidden.batch, hidden.seq), dtype=np.float32)
        self.cuda.dtoh(start, self._start, self._stream)
        self.cuda.dtoh(end, self._end, self._stream)
        self.cuda.synchronize(self._stream)
        return start, end

    def select_rows(self, hidden: DeviceHidden, rows: Sequence[int], width: int) -> DeviceHidden:
        """Keep ``rows`` and the first ``width`` tokens, on the GPU (into the other ping-pong buffer)."""
        out = self._other(hidden.ptr)
        new_row_bytes = width * hidden.hidden * FLOAT32_BYTES
        for j, i in enumerate(rows):
            self.cuda.dtod(out + j * new_row_bytes, hidden.ptr + int(i) * hidden.row_bytes, new_row_bytes, self._stream)
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
        for j, i in enumerate(rows):
            src_row = hidden.ptr + int(i) * hidden.row_bytes
            dst_row = out + j * width * token_bytes
            for dst, src, count in copy_runs(index[j]):
                self.cuda.dtod(dst_row + dst * token_bytes, src_row + src * token_bytes, count * token_bytes, self._stream)
        return DeviceHidden(out, len(rows), width, hidden.hidden)

    def describe(self) -> str:
        return f"tensorrt {self.trt.__version__} ({getattr(self.cuda, 'name', 'cuda')})"

    def close(self) -> None:
        if self.cuda is None:
            return
        if self._stream is not None:
            self.cuda.synchronize(self._stream)
        while self._buffers:
            self.cuda.free(self._buffers.pop())
        if self._stream is not None:
            self.cuda.destroy_stream(self._stream)
            self._stream = None
