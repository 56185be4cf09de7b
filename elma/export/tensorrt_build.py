"""``elma build-engines``: one serialized TensorRT engine per ONNX graph of a bundle.

Written from NVIDIA's documented Python API (TensorRT developer guide and API
reference; shared/JETSON-NOTES.md section 4). Per graph:

    network = builder.create_network(EXPLICIT_BATCH before 10)
    OnnxParser(network, logger).parse(onnx_bytes, path)     # path: weights.bin is read from its folder
    config.set_memory_pool_limit(WORKSPACE, n)              # config.max_workspace_size before 8.4
    config.set_flag(FP16); layer.precision = float32 and
    layer.set_output_type(i, float32) on normalisation, softmax and reduce layers, made binding by
    OBEY_PRECISION_CONSTRAINTS (STRICT_TYPES before 8.2)
    profile.set_shape(name, min, opt, max) for every input; config.add_optimization_profile(profile)
    config.set_timing_cache(cache)                          # one cache for all graphs, saved in the bundle
    plan = builder.build_serialized_network(network, config)

The graphs of a bundle repeat the same layers, so the shared timing cache
saves most of the tactic timing after the first group. The TensorRT version
and the GPU go into the manifest; ``elma.runtime.trt_compat.check_engine_compat``
refuses the engines elsewhere. ``tensorrt`` is imported only inside
``build_engines``; the rest of this module is plain data and is unit-tested
without a GPU.
"""

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from elma.errors import ElmaError, EngineLoadError, ExportError
from elma.fsutil import refuse_unless_overwrite
from elma.runtime.bundle import MANIFEST_NAME, Bundle, load_bundle, read_manifest, update_manifest
from elma.runtime.trt_compat import (
    EngineTarget,
    TrtFeatures,
    check_engine_compat,
    current_engine_target,
    import_tensorrt,
    trt_features,
)

logger = logging.getLogger(__name__)

TIMING_CACHE_FILE = "timing.cache"
# TensorRT layer types (trt.LayerType names) kept in fp32 under --fp16: LayerNorm (NORMALIZATION, 8.6+), its
# decomposition and softmax internals (REDUCE), SOFTMAX. Names missing from an older TensorRT are skipped.
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
# Under --opset 13 (TensorRT before 8.6) LayerNorm arrives decomposed: ReduceMean, Sub, Pow, ReduceMean, Add(eps),
# Sqrt, Div, Mul, Add. Pow (x-mean)^2 and the variance overflow fp16 on large activations, so every float layer of
# the LayerNorm scope is pinned too. The ONNX parser names a layer after its ONNX node, and torch's exporter names
# nodes after the module path (".../output/LayerNorm/Pow"; ALBERT's "full_layer_layer_norm").
LAYERNORM_NAME = re.compile(r"layer_?norm", re.IGNORECASE)
SCOPE_LAYER_TYPES = ("ELEMENTWISE", "UNARY", "REDUCE")  # the arithmetic of that scope (not its constants/shuffles)


@dataclass(frozen=True)
class EngineBuildConfig:
    """``elma build-engines`` options; CLI flags map 1:1 onto these fields."""

    fp16: bool = False  # allow fp16 kernels (BuilderFlag.FP16), normalisation layers pinned to fp32
    workspace_mb: int = 1024  # builder scratch-memory limit per layer, MiB
    max_batch: int = 8  # largest batch the engines accept
    opt_batch: int = 1  # batch the kernels are tuned for (the device answers one question at a time)
    opt_seq_length: Optional[int] = None  # sequence length tuned for; default: the bundle's max_seq_length
    min_seq_length: int = 1

    def __post_init__(self) -> None:
        if self.workspace_mb < 1:
            raise ValueError(f"workspace_mb must be at least 1 (got {self.workspace_mb})")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt_batch <= max_batch (got {self.opt_batch}, {self.max_batch})")
        if self.min_seq_length < 1:
            raise ValueError(f"min_seq_length must be at least 1 (got {self.min_seq_length})")


@dataclass(frozen=True)
class ProfileShape:
    """One input's optimisation-profile shapes."""

    min: Tuple[int, ...]
    opt: Tuple[int, ...]
    max: Tuple[int, ...]


def profile_shapes(inputs: Sequence[Mapping[str, Any]], max_seq_length: int, config: EngineBuildConfig
                   ) -> Dict[str, ProfileShape]:
    """Shapes for ``profile.set_shape`` from a manifest ``io`` input list (symbolic "batch"/"seq", fixed ints).

    Raises:
        ValueError: the sequence bounds are not ordered, or a dimension is neither symbolic nor a positive int.
    """
    opt_seq = config.opt_seq_length or max_seq_length
    if not config.min_seq_length <= opt_seq <= max_seq_length:
        raise ValueError(f"need min_seq_length <= opt_seq_length <= max_seq_length "
                         f"(got {config.min_seq_length}, {opt_seq}, {max_seq_length})")
    bounds = {"batch": (1, config.opt_batch, config.max_batch), "seq": (config.min_seq_length, opt_seq, max_seq_length)}
    shapes = {}
    for tensor in inputs:
        dims = []
        for dim in tensor["shape"]:
            if isinstance(dim, str) and dim in bounds:
                dims.append(bounds[dim])
            elif isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
                dims.append((dim, dim, dim))
            else:
                raise ValueError(f"input {tensor['name']}: dimension {dim!r} is neither 'batch', 'seq' nor a size")
        shapes[tensor["name"]] = ProfileShape(*(tuple(d[i] for d in dims) for i in range(3)))
    return shapes


def plan_name(onnx_name: str) -> str:
    """``group0.onnx`` -> ``group0.plan``."""
    return onnx_name[:-len(".onnx")] + ".plan" if onnx_name.endswith(".onnx") else onnx_name + ".plan"


def graphs_to_build(bundle: Bundle) -> List[Tuple[str, str]]:
    """(graph file name, io kind) of every distinct graph: embeddings, groups, exits, fused."""
    graphs = [(bundle.embeddings.name, "embeddings")]
    graphs += [(p.name, "group") for p in bundle.group_files]
    graphs += [(p.name, "exit") for p in bundle.exits]
    graphs.append((bundle.fused.name, "fused"))
    return graphs


@dataclass(frozen=True)
class EngineBuildReport:
    bundle: Path
    plans: Dict[str, str]  # onnx file -> plan file
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    wall_s: float


def check_engines_target(path: "str | os.PathLike", overwrite: bool) -> None:
    """Refuse (exit 2), before building, to replace the engines a bundle already records unless ``overwrite``."""
    if read_manifest(Path(path)).get("engines"):
        refuse_unless_overwrite(f"{Path(path) / MANIFEST_NAME} (engines built earlier)", "bundle", overwrite)


def build_engines(path: "str | os.PathLike", config: EngineBuildConfig = EngineBuildConfig()) -> EngineBuildReport:
    """Build and record one engine per graph of the bundle at ``path``.

    Every engine is built into a temporary folder first and moved into the bundle only when all are built,
    so a failed build leaves the bundle's earlier engines (and their manifest entry) as they were.

    Raises:
        BundleError: the bundle does not verify.
        TensorRTUnavailable: no ``tensorrt`` module or no CUDA GPU.
        ExportError: an int8 bundle, a graph TensorRT cannot parse, or a failed build.
    """
    began = time.perf_counter()
    bundle = load_bundle(path)
    if bundle.precision == "int8":
        raise ExportError(f"{bundle.root}: int8 bundles use ONNX Runtime's dynamic quantisation (CPU only); build "
                          f"engines from an fp32 or fp16 bundle (`elma export MODEL -o B --precision fp16`)")
    trt = import_tensorrt()
    target = current_engine_target()
    features = trt_features(trt.__version__)
    if bundle.opset >= 17 and not features.native_layernorm:
        logger.warning("TensorRT %s may not parse LayerNormalization (opset %d); if parsing fails, re-export with "
                       "--opset 13", trt.__version__, bundle.opset)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    cache_path = bundle.root / TIMING_CACHE_FILE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() and _same_target(bundle, target) else b""
    cache_config = builder.create_builder_config()  # kept alive with the cache it created
    cache = cache_config.create_timing_cache(cache_bytes)
    plans: Dict[str, str] = {}
    profiles: Dict[str, Dict[str, Any]] = {}
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.root.name}.engines-", dir=str(bundle.root.parent)))
    try:
        for name, kind in graphs_to_build(bundle):
            shapes = profile_shapes(bundle.io[kind]["inputs"], bundle.max_seq_length, config)
            profiles[kind] = {n: asdict(s) for n, s in shapes.items()}
            plan = _build_one(trt, builder, trt_logger, features, bundle.root / name, shapes, config, cache)
            plans[name] = plan_name(name)
            (staging / plans[name]).write_bytes(plan)
            logger.info("built %s (%d bytes)", plans[name], len(plan))
        (staging / TIMING_CACHE_FILE).write_bytes(bytes(cache.serialize()))
        for file_name in [*plans.values(), TIMING_CACHE_FILE]:  # all built: move them in (same file system)
            os.replace(staging / file_name, bundle.root / file_name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    engines = {**target.to_dict(), "fp16": config.fp16, "workspace_mb": config.workspace_mb,
               "profiles": profiles, "plans": plans, "timing_cache": TIMING_CACHE_FILE, "io_api": features.io_api}
    update_manifest(bundle.root, {"engines": engines}, new_files=list(plans.values()) + [TIMING_CACHE_FILE])
    return EngineBuildReport(bundle.root, plans, target.tensorrt_version, target.gpu_name, target.compute_capability,
                             time.perf_counter() - began)


def _build_one(trt, builder, trt_logger, features: TrtFeatures, onnx_path: Path, shapes: Mapping[str, ProfileShape],
               config: EngineBuildConfig, cache) -> bytes:
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if features.explicit_batch_flag else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = "" if features.native_layernorm else " (TensorRT before 8.6: re-export with --opset 13)"
        raise ExportError(f"{onnx_path.name}: TensorRT {trt.__version__} cannot parse it: {errors}{hint}")
    build_config = builder.create_builder_config()
    workspace_bytes = config.workspace_mb << 20
    if features.memory_pool_api:
        build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    else:
        build_config.max_workspace_size = workspace_bytes
    if config.fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ExportError(f"TensorRT {trt.__version__} builds strongly typed networks only: export an fp16 bundle "
                              f"(`elma export --precision fp16`) and build without --fp16")
        if not hasattr(trt.BuilderFlag, features.precision_flag):
            raise ExportError(f"TensorRT {trt.__version__} has no BuilderFlag.{features.precision_flag}, so fp32 "
                              f"normalisation cannot be enforced; build without --fp16 or use TensorRT 8.0-10.x")
        build_config.set_flag(trt.BuilderFlag.FP16)
        pinned = pin_layers_fp32(trt, network)
        build_config.set_flag(getattr(trt.BuilderFlag, features.precision_flag))
        logger.debug("%s: %d layers pinned to fp32", onnx_path.name, pinned)
    if not build_config.set_timing_cache(cache, False):  # ignore_mismatch=False: refuse a cache of another GPU
        logger.warning("%s: TensorRT refused the timing cache; building without it", onnx_path.name)
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape.min, shape.opt, shape.max)
    build_config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, build_config)
    if plan is None:
        raise ElmaError(f"{onnx_path.name}: TensorRT could not build an engine (see its log above); try a larger "
                        f"--workspace or a smaller --max-batch")
    return bytes(plan)


def _same_target(bundle: Bundle, target: EngineTarget) -> bool:
    """Whether the bundle's last engines (and so its timing cache) were built for ``target``."""
    if not bundle.engines:
        return False
    try:
        check_engine_compat(bundle.engines, target)
    except EngineLoadError:
        return False
    return True


def pin_layers_fp32(trt, network, layer_types: Sequence[str] = FP32_LAYER_TYPES,
                    scope: "re.Pattern[str]" = LAYERNORM_NAME) -> int:
    """Set ``precision`` and output types to fp32 on float layers of ``layer_types`` and on every float layer whose
    name matches ``scope`` (a decomposed LayerNorm); returns how many layers."""
    wanted = {getattr(trt.LayerType, name) for name in layer_types if hasattr(trt.LayerType, name)}
    arithmetic = {getattr(trt.LayerType, name) for name in SCOPE_LAYER_TYPES if hasattr(trt.LayerType, name)}
    floats = {trt.float32, trt.float16}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.num_outputs < 1 or layer.get_output(0).dtype not in floats:
            continue  # integer reductions (shape arithmetic) keep their type
        in_scope = layer.type in arithmetic and scope.search(str(getattr(layer, "name", ""))) is not None
        if layer.type not in wanted and not in_scope:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned
