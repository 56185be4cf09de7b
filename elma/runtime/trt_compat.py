"""TensorRT versions and engine compatibility, without importing TensorRT.

A serialized TensorRT engine runs only with the TensorRT version that built it
and on the GPU model it was built for ("Serialized engines are not portable
across platforms or TensorRT versions", NVIDIA TensorRT developer guide). The
builder records both in the bundle manifest; ``check_engine_compat`` refuses a
mismatch with the command that rebuilds the engines.

The Python API changed twice in the TensorRT versions JetPack ships (JP4.6:
8.0/8.2, JP5: 8.5, JP6.0: 8.6, JP6.1+: 10.x; see shared/JETSON-NOTES.md):

* 8.0-8.4: bindings (``execute_async_v2``); 8.5+: name-based tensors (``set_tensor_address``,
  ``execute_async_v3``); 10.0 removed the binding API.
* ``config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)`` from 8.4, ``config.max_workspace_size``
  before (removed in 10).
* ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` from 8.2, ``BuilderFlag.STRICT_TYPES`` before.
* ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is required before 10 and deprecated (implied) from 10.
* TensorRT 11 removed the weakly typed builder flags (``BuilderFlag.FP16``, ``OBEY_PRECISION_CONSTRAINTS``):
  refused by ``trt_features`` until the build moves to strongly typed networks.
* The ONNX parser maps ``LayerNormalization`` (opset 17) to a normalization layer from 8.6; older
  versions need a graph exported with ``--opset 13`` (8.0-8.4 parse opsets up to 13).
"""

import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from elma.errors import EngineLoadError, TensorRTUnavailable

MIN_TENSORRT = (8, 0)
# TensorRT 11 removed the weakly typed builder API the engines are built with (BuilderFlag.FP16,
# OBEY_PRECISION_CONSTRAINTS) and ICudaEngine.device_memory_size (NVIDIA's "Migrating from TensorRT 10.x
# to 11.x", https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x.html).
MAX_TENSORRT_MAJOR = 10


def parse_trt_version(version: str) -> Tuple[int, ...]:
    """"8.6.1.6" -> (8, 6, 1, 6); "10.3.0" -> (10, 3, 0). Suffixes such as "+cuda12.6" or "post1" are ignored."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", str(version))
    if not match:
        raise ValueError(f"not a TensorRT version string (got {version!r})")
    return tuple(int(p) for p in match.group(1).split("."))


@dataclass(frozen=True)
class TrtFeatures:
    """Which API a TensorRT version offers, decided once from its version number."""

    version: Tuple[int, ...]
    io_api: str  # "bindings" (8.0-8.4, execute_async_v2) or "tensors" (8.5+, set_tensor_address/execute_async_v3)
    memory_pool_api: bool  # set_memory_pool_limit (8.4+) instead of max_workspace_size
    precision_flag: str  # BuilderFlag name that makes layer.precision binding: OBEY_PRECISION_CONSTRAINTS or STRICT_TYPES
    explicit_batch_flag: bool  # pass NetworkDefinitionCreationFlag.EXPLICIT_BATCH to create_network (before 10)
    native_layernorm: bool  # ONNX LayerNormalization parses to a normalization layer (8.6+); else export --opset 13


def trt_features(version: str) -> TrtFeatures:
    """The API of TensorRT ``version``; refuses versions before 8.0 and from 11 on."""
    v = parse_trt_version(version)
    major_minor = (v + (0,))[:2]
    if major_minor < MIN_TENSORRT:
        raise TensorRTUnavailable(f"TensorRT {version} is too old: ELMA needs TensorRT 8.0 or newer (JetPack 4.6+)")
    if major_minor[0] > MAX_TENSORRT_MAJOR:
        raise TensorRTUnavailable(f"TensorRT {version} is not supported: ELMA builds and runs engines with TensorRT "
                                  f"8.0-10.x (TensorRT 11 removed the FP16/OBEY_PRECISION_CONSTRAINTS builder flags "
                                  f"it uses); install TensorRT 10 (JetPack 6.1/6.2) or use --backend onnxruntime")
    return TrtFeatures(
        version=v,
        io_api="tensors" if major_minor >= (8, 5) else "bindings",
        memory_pool_api=major_minor >= (8, 4),
        precision_flag="OBEY_PRECISION_CONSTRAINTS" if major_minor >= (8, 2) else "STRICT_TYPES",
        explicit_batch_flag=major_minor < (10, 0),
        native_layernorm=major_minor >= (8, 6),
    )


@dataclass(frozen=True)
class EngineTarget:
    """What an engine is bound to: the TensorRT version and the GPU."""

    tensorrt_version: str  # tensorrt.__version__, e.g. "8.5.2.2"
    gpu_name: str  # e.g. "Orin", "NVIDIA GeForce RTX 3090"
    compute_capability: str  # "major.minor", e.g. "8.7"

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)


def check_engine_compat(recorded: Mapping[str, Any], current: EngineTarget, bundle_path: Any = "BUNDLE") -> None:
    """Refuse engines built for another TensorRT version or GPU.

    Args:
        recorded: the manifest's ``engines`` table (holds ``tensorrt_version``, ``gpu_name``, ``compute_capability``).
        current: this machine (``current_engine_target()``).
        bundle_path: shown in the rebuild command.

    Raises:
        EngineLoadError: saying what differs and how to rebuild.
    """
    built = EngineTarget(str(recorded.get("tensorrt_version")), str(recorded.get("gpu_name")),
                         str(recorded.get("compute_capability")))
    problems = []
    try:
        same_trt = parse_trt_version(built.tensorrt_version)[:3] == parse_trt_version(current.tensorrt_version)[:3]
    except ValueError:
        same_trt = False
    if not same_trt:
        problems.append(f"TensorRT {built.tensorrt_version} (this machine has {current.tensorrt_version})")
    if built.compute_capability != current.compute_capability or built.gpu_name != current.gpu_name:
        problems.append(f"GPU {built.gpu_name} (compute capability {built.compute_capability}; this machine has "
                        f"{current.gpu_name}, {current.compute_capability})")
    if problems:
        raise EngineLoadError(f"the engines in {bundle_path} were built for {' and '.join(problems)}; rebuild them "
                              f"here with `elma build-engines {bundle_path} --overwrite` (or use the onnxruntime backend)")


def current_engine_target() -> EngineTarget:
    """TensorRT version and GPU of this machine (imports tensorrt and a CUDA binding lazily).

    Raises:
        TensorRTUnavailable: without tensorrt, or without a CUDA binding (cuda-python, pycuda or torch) to name the GPU.
    """
    trt = import_tensorrt()
    name, capability = gpu_identity()
    return EngineTarget(trt.__version__, name, capability)


def import_tensorrt():
    """``import tensorrt``, or a TensorRTUnavailable that says how to get it."""
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailable(
            "the Python module `tensorrt` is not installed: on a Jetson it comes with JetPack (python3-libnvinfer); "
            "on a desktop GPU `pip install tensorrt`. Without a GPU, run bundles with the onnxruntime backend") from err
    return tensorrt


def gpu_identity(device: int = 0) -> Tuple[str, str]:
    """(name, "major.minor") of CUDA device ``device``, through the first CUDA binding that imports."""
    errors = []
    for probe in (_probe_cuda_python, _probe_pycuda, _probe_torch):
        try:
            found = probe(device)
        except ImportError as err:
            errors.append(str(err))
            continue
        if found is not None:
            return found
    raise TensorRTUnavailable("no CUDA GPU found (tried cuda-python, pycuda and torch: "
                              f"{'; '.join(errors) or 'no device'}); build engines on the machine that will run them")


def _probe_cuda_python(device: int) -> Optional[Tuple[str, str]]:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python 12.6+
    except ImportError:
        from cuda import cudart  # older cuda-python
    err, prop = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        return None
    name = prop.name.decode("utf-8", "replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"


def _probe_pycuda(device: int) -> Optional[Tuple[str, str]]:
    import pycuda.driver as cuda

    cuda.init()
    if cuda.Device.count() <= device:
        return None
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return dev.name(), f"{major}.{minor}"


def _probe_torch(device: int) -> Optional[Tuple[str, str]]:
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() <= device:
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"
