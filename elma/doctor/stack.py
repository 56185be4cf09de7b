"""Checks of the inference stack: onnxruntime and its providers, TensorRT, a CUDA binding, the GPU, the bundle.

Each heavy module is imported inside its check; an import that fails for any reason (a wheel built for
another CUDA, a missing shared library) is reported, never raised.
"""

import logging
from pathlib import Path
from typing import Optional, Tuple

from elma.doctor.report import MISSING, OK, WRONG, Check

logger = logging.getLogger(__name__)

ORT_FIX_JETSON = ("pip3 uninstall -y onnxruntime; pip3 install onnxruntime-gpu from the Jetson Zoo wheel of your "
                  "JetPack (docs/jetson.md, 'onnxruntime-gpu'), or use the Dockerfile.l4t image")
ORT_FIX_DESKTOP = "pip install 'elma[runtime]'"
TRT_FIX = ("TensorRT comes with JetPack: sudo apt-get install python3-libnvinfer (or use the Dockerfile.l4t image); "
           "on a desktop GPU: pip install tensorrt")
CUDA_BINDING_FIX = "pip3 install pycuda (JetPack 4/5) or pip3 install cuda-python (JetPack 6)"


def _import_error(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def check_onnxruntime(on_jetson: bool) -> Tuple[Check, Tuple[str, ...]]:
    """The onnxruntime check and its providers (empty when it does not import)."""
    try:
        import onnxruntime as ort

        providers = tuple(ort.get_available_providers())
    except ImportError as err:
        return Check("onnxruntime", MISSING, f"not importable ({_import_error(err)})",
                     ORT_FIX_JETSON if on_jetson else ORT_FIX_DESKTOP), ()
    except Exception as err:  # a wheel for another CUDA/JetPack fails in many ways at import
        return Check("onnxruntime", WRONG, f"import failed: {_import_error(err)}", ORT_FIX_JETSON), ()
    detail = f"onnxruntime {ort.__version__}, providers {', '.join(p.replace('ExecutionProvider', '') for p in providers)}"
    gpu = [p for p in providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
    if on_jetson and not gpu:
        return Check("onnxruntime", WRONG, detail + " (CPU only: the PyPI wheel, not NVIDIA's Jetson build)",
                     ORT_FIX_JETSON), providers
    return Check("onnxruntime", OK, detail), providers


def check_tensorrt() -> Tuple[Check, Optional[str]]:
    """The TensorRT check and its version (None when missing)."""
    from elma.errors import TensorRTUnavailable
    from elma.runtime.trt_compat import trt_features

    try:
        import tensorrt
    except ImportError as err:
        return Check("tensorrt", MISSING, f"not importable ({_import_error(err)})", TRT_FIX), None
    except Exception as err:
        return Check("tensorrt", WRONG, f"import failed: {_import_error(err)}", TRT_FIX), None
    version = str(tensorrt.__version__)
    try:
        features = trt_features(version)
    except (TensorRTUnavailable, ValueError) as err:
        return Check("tensorrt", WRONG, str(err), "install TensorRT 8.0-10.x (JetPack 4.6-6.2)"), None
    return Check("tensorrt", OK, f"TensorRT {version} ({features.io_api} API)"), version


def check_cuda_binding() -> Tuple[Check, Optional[str]]:
    """Which CUDA binding the tensorrt backend would use (cuda-python first, then pycuda)."""
    errors = []
    for name, modules in (("cuda-python", ("cuda.bindings.runtime", "cuda.cudart")), ("pycuda", ("pycuda.driver",))):
        for module in modules:
            try:
                imported = __import__(module, fromlist=["_"])
            except ImportError as err:
                errors.append(f"{module}: {_import_error(err)}")
                continue
            except Exception as err:
                return Check("cuda binding", WRONG, f"{module} failed to import: {_import_error(err)}",
                             CUDA_BINDING_FIX), None
            return Check("cuda binding", OK, f"{name} {_package_version(imported, module)}".strip() + f" ({module})"), name
    return Check("cuda binding", MISSING, "neither cuda-python nor pycuda imports", CUDA_BINDING_FIX), None


def _package_version(module, name: str) -> str:
    import sys

    top = sys.modules.get(name.split(".")[0])
    for obj in (module, top):
        version = getattr(obj, "__version__", None) or getattr(obj, "VERSION_TEXT", None)  # pycuda: VERSION_TEXT
        if version:
            return str(version)
    return ""


def check_gpu(binding: Optional[str]) -> Tuple[Check, Optional[Tuple[str, str]]]:
    """GPU name and compute capability through the CUDA binding (never torch: too slow to import here)."""
    if binding is None:
        return Check("gpu", MISSING, "no CUDA binding to ask the GPU", CUDA_BINDING_FIX), None
    from elma.runtime.trt_compat import _probe_cuda_python, _probe_pycuda

    probe = _probe_cuda_python if binding == "cuda-python" else _probe_pycuda
    try:
        found = probe(0)
    except Exception as err:  # no driver, no device node (a container without --runtime nvidia)
        return Check("gpu", WRONG, f"CUDA cannot open the GPU: {_import_error(err)}",
                     "run the container with --runtime nvidia; on the board check `ls /dev/nvhost-*` and the "
                     "user's video group"), None
    if found is None:
        return Check("gpu", MISSING, "CUDA sees no GPU", "run the container with --runtime nvidia"), None
    name, capability = found
    return Check("gpu", OK, f"{name}, compute capability {capability}"), found


def check_bundle(bundle_path: Path) -> Tuple[Check, object]:
    """Load the bundle and verify every file's checksum."""
    from elma.errors import BundleError
    from elma.runtime.bundle import load_bundle

    if not Path(bundle_path).exists():
        return Check("bundle", MISSING, f"{bundle_path}: no such folder",
                     f"copy the bundle to the board: rsync -a --checksum BUNDLE/ {bundle_path}/ (docs/jetson.md)"), None
    try:
        bundle = load_bundle(bundle_path, verify_checksums=True)
    except BundleError as err:
        return Check("bundle", WRONG, str(err), f"copy the bundle again (rsync -a --checksum SRC/ {bundle_path}/) "
                     "or re-export it with `elma export`"), None
    except OSError as err:
        return Check("bundle", MISSING, f"{bundle_path}: {err}", "copy the bundle to the board (docs/jetson.md)"), None
    detail = (f"{bundle_path}: {bundle.num_layers} layers, {bundle.precision}, opset {bundle.opset}, "
              f"{len(bundle.manifest.get('files', {}))} files verified")
    return Check("bundle", OK, detail), bundle


def check_engines(bundle, bundle_path: Path, trt_version: Optional[str], gpu: Optional[Tuple[str, str]]) -> Check:
    """Whether the bundle's engines were built for this TensorRT and GPU."""
    from elma.errors import EngineLoadError
    from elma.runtime.trt_compat import EngineTarget, check_engine_compat

    rebuild = f"elma build-engines {bundle_path}"
    if not bundle.engines:
        return Check("engines", MISSING, "the bundle has no TensorRT engines yet", rebuild)
    built = "TensorRT {} for {} ({})".format(bundle.engines.get("tensorrt_version"), bundle.engines.get("gpu_name"),
                                             bundle.engines.get("compute_capability"))
    if trt_version is None or gpu is None:
        return Check("engines", MISSING, f"built with {built}; cannot compare without TensorRT and the GPU", TRT_FIX)
    try:
        check_engine_compat(bundle.engines, EngineTarget(trt_version, gpu[0], gpu[1]), bundle_path)
    except EngineLoadError as err:
        return Check("engines", WRONG, str(err), rebuild)
    plans = bundle.engines.get("plans") or {}
    missing = [plan for plan in plans.values() if not (Path(bundle_path) / plan).is_file()]
    if missing:
        return Check("engines", WRONG, f"plan files missing: {', '.join(missing)}", rebuild)
    return Check("engines", OK, f"{len(plans)} engines built with {built}")
