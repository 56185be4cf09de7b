"""The few CUDA calls the TensorRT backend needs, through cuda-python or pycuda, bound to the calling thread.

A CUDA context is current per host thread. ``import pycuda.autoinit`` creates one and makes it current
on the importing thread only, so a backend loaded on one thread and called from another (``elma-serve``
answers in a thread pool) ran its copies and TensorRT enqueues without a context. Here every public
backend call runs inside ``with cuda.activate():``

* pycuda: the device's primary context (``Device.retain_primary_context``; a context made with
  ``make_context`` and popped at once on pycuda without it) is pushed on the calling thread and popped
  after the call (``Context.push``/``Context.pop``, pycuda driver documentation);
* cuda-python: ``cudaSetDevice(device)`` on the calling thread, which makes that device's primary
  context current there (the runtime API's current device is per host thread).

Host staging buffers are page-locked (``cudaMallocHost`` / ``pycuda.driver.pagelocked_empty``): an
asynchronous copy from pageable memory is staged by the driver through a pinned bounce buffer and
does not overlap. Every cuda-python status goes through ``cuda_call`` (the helper of NVIDIA/TensorRT
samples/python/common_runtime.py). Nothing here imports a CUDA module at import time.
"""

import ctypes
import logging
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Tuple

import numpy as np

from elma.errors import EngineLoadError

logger = logging.getLogger(__name__)


def cuda_call(result: Any) -> Any:
    """Check a cuda-python call's status; return its value(s).

    cuda-python calls return ``(err,)`` or ``(err, value, ...)``; ``err`` is a ``cudaError_t`` whose int
    value is 0 on success.

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


def _nbytes(shape: Tuple[int, ...], dtype: Any) -> int:
    return max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)


class CudaPython:
    """CUDA runtime calls through cuda-python (``cudart``) on device ``device``."""

    name = "cuda-python"

    def __init__(self, device: int = 0):
        try:
            from cuda.bindings import runtime as cudart  # cuda-python 12.6+
        except ImportError:
            from cuda import cudart  # older cuda-python
        self.cudart = cudart
        self.device = int(device)
        self._host: Dict[int, int] = {}  # id(array) -> cudaMallocHost pointer
        cuda_call(cudart.cudaSetDevice(self.device))

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Make the device's primary context current on the calling thread for the block."""
        cuda_call(self.cudart.cudaSetDevice(self.device))
        yield

    def malloc(self, nbytes: int) -> int:
        return int(cuda_call(self.cudart.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        cuda_call(self.cudart.cudaFree(ptr))

    def host_empty(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        """A page-locked host array (free it with ``host_free``)."""
        nbytes = _nbytes(shape, dtype)
        ptr = int(cuda_call(self.cudart.cudaMallocHost(nbytes)))
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        array = np.frombuffer(raw, dtype=np.uint8)[:int(np.prod(shape)) * np.dtype(dtype).itemsize]
        array = array.view(dtype).reshape(shape)
        self._host[id(array)] = ptr
        return array

    def host_free(self, array: np.ndarray) -> None:
        ptr = self._host.pop(id(array), None)
        if ptr is not None:
            cuda_call(self.cudart.cudaFreeHost(ptr))

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

    def close(self) -> None:
        """Nothing to release: the runtime API owns the primary context."""


class PyCuda:
    """The same calls through pycuda (JetPack 4.6 images ship it); errors surface as pycuda exceptions.

    No ``pycuda.autoinit``: that binds a new context to the importing thread. The device's primary context
    is retained once here and pushed on whichever thread calls (``activate``).
    """

    name = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        dev = cuda.Device(int(device))
        retain = getattr(dev, "retain_primary_context", None)
        if retain is not None:
            self.context = retain()  # not current anywhere until pushed
        else:  # a pycuda without primary-context support: a context of our own, taken off this thread at once
            self.context = dev.make_context()
            cuda.Context.pop()
        self._allocations: Dict[int, Any] = {}

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Push the context on the calling thread for the block; pop it after, even on error."""
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def malloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(max(int(nbytes), 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def host_empty(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def host_free(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        if hasattr(base, "free"):
            base.free()

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

    def close(self) -> None:
        """Release the retained context (it must not be current on the calling thread)."""
        context, self.context = self.context, None
        if context is not None:
            context.detach()


def open_cuda(device: int = 0):
    """cuda-python if it imports, else pycuda.

    Raises:
        EngineLoadError: neither imports.
    """
    errors = []
    for api in (CudaPython, PyCuda):
        try:
            return api(device)
        except ImportError as err:
            errors.append(f"{api.name}: {err}")
    raise EngineLoadError("the tensorrt backend needs cuda-python (`pip install cuda-python`) or pycuda "
                          f"({'; '.join(errors)})")
