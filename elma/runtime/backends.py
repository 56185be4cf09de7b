"""Backends: the three steps the early-exit loop needs, behind one narrow interface.

    embed(input_ids, token_type_ids)        -> hidden (B, T, H) float32
    run_layer(slot, hidden, attention_mask) -> hidden (B, T, H)
    run_exit(slot, hidden, attention_mask)  -> (start_logits, end_logits), each (B, T) float32
    select_rows(hidden, rows, width)        -> the rows that run on, cut to ``width`` tokens
    select_tokens(hidden, rows, index)      -> the rows that run on, with the tokens skimming kept

and, for the full-depth baseline a benchmark compares against, the whole model in one call:

    run_fused(input_ids, attention_mask, token_type_ids) -> last exit's (start_logits, end_logits), (B, T) float32

Slots are 0-based. Ids and masks are int32 numpy arrays (what the bundle's
graphs and TensorRT 8.x engines take). The loop, the exit policy and span
decoding live in ``elma.runtime.engine``; a backend only runs graphs.

* ``OrtBackend``: ONNX Runtime on a bundle, the default. One session per
  distinct file (ALBERT's shared layer graph is loaded once), CPU, or the CUDA /
  TensorRT execution providers when this onnxruntime has them.
* ``TorchBackend``: the PyTorch reference, ``elma.model.steps`` on an ELMA model folder.
* ``TensorRTBackend`` (``elma.runtime.trt_backend``): native engines from ``elma build-engines``.

Heavy modules (onnxruntime, torch, tensorrt) are imported inside the backend
that needs them, so ``import elma.runtime.backends`` costs nothing.
"""

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from elma.errors import BundleError, ModelLoadError

logger = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch", "tensorrt")
ORT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class Backend:
    """Runs the steps of one model. Subclasses set ``num_layers`` and ``thread_safe``.

    ``thread_safe``: several threads may call the step methods at once (ONNX Runtime sessions and
    PyTorch modules in inference mode are; a TensorRT execution context is not, so the runtime
    serialises whole questions on that backend).
    """

    name = "base"
    num_layers = 0
    thread_safe = True

    def embed(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_layer(self, slot: int, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_exit(self, slot: int, hidden: np.ndarray, attention_mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def run_fused(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                  token_type_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The whole model at full depth in one call (the bundle's fused graph): the last exit's logits.

        Args:
            input_ids, attention_mask, token_type_ids: (B, T) int32.

        Returns:
            (start_logits, end_logits), each (B, T) float32.

        Raises:
            NotImplementedError: this backend has no fused graph (the message names the backend).
        """
        raise NotImplementedError(f"the {self.name} backend ({type(self).__name__}) cannot run the fused graph")

    def select_rows(self, hidden, rows: Sequence[int], width: int):
        """The hidden state of ``rows`` only, cut to the first ``width`` tokens (rows that exited leave the batch)."""
        return np.ascontiguousarray(hidden[np.asarray(rows), :width])

    def select_tokens(self, hidden, rows: Sequence[int], index: np.ndarray):
        """Keep ``rows``, and in row j the tokens ``index[j]`` (positions into source row ``rows[j]``; skimming).

        ``index`` is (len(rows), T') from ``elma.runtime.skim.gather_index``: the kept tokens of each row, then
        padding slots that read real tokens. ONNX Runtime and torch hand the hidden state over as numpy
        between steps, so one fancy-indexing gather serves both.
        """
        index = np.asarray(index)
        return np.ascontiguousarray(hidden[np.asarray(rows)[:, None], index])  # (B', T', H)

    def describe(self) -> str:
        """One line: which backend, on what."""
        return self.name

    def close(self) -> None:
        """Free sessions, engines and buffers (idempotent)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class OrtOptions:
    """ONNX Runtime session set-up for a chain of many short runs (one per layer and exit head).

    Measured on a 2-core machine (runtime issue): with the default intra-op thread spinning, the
    per-layer chain of MiniLM-L6 cost 192 ms against 29.4 ms for the fused graph; with spinning off
    31.7 ms. Spinning threads keep burning the cores between the short runs, so it is off here.
    """

    intra_op_threads: int = 0  # threads inside one op; 0 = one per physical core (ORT's default)
    inter_op_threads: int = 1  # the chain is sequential: parallel branches would only add hand-offs
    allow_spinning: bool = False  # "session.intra_op.allow_spinning"; see above
    providers: Optional[Tuple[str, ...]] = None  # None: TensorRT, CUDA, CPU, whichever this onnxruntime has
    graph_optimization: str = "all"  # "disable", "basic", "extended" or "all"
    trt_cache_dir: Optional[str] = None  # TensorRT EP engine and timing caches; None: ~/.cache/elma/ort-trt/<bundle digest>
    trt_fp16: bool = False  # let the TensorRT EP build fp16 kernels (LayerNorm kept fp32 by trt_layer_norm_fp32_fallback)
    trt_max_batch: int = 8  # TensorRT EP profile: batches 1..this, windows 1..max_seq_length (elma.runtime.ort_trt)
    # One CPU memory arena for every session of the process (ORT's environment allocator, shared_cpu_arena) instead
    # of one per session: each arena grows to its session's largest run and keeps it, and a bundle has 2L+2
    # sessions. Measured on MiniLM-L6 (fp32 and int8 bundles, chain and fused graph each, 10 dev questions): 447 -> 286
    # MB; recording 100 dev questions on the fp32 bundle: 420 -> 200 MB (a 384-token window grew all 13 arenas).
    shared_arena: bool = True
    # ORT's memory pattern (``enable_mem_pattern``) traces a run's allocations per input shape, caches the pattern
    # and allocates it as one block: with a window length that changes per question it keeps a pattern per length
    # and the varying blocks fragment the arena. Measured (MiniLM-L6 fused fp32 graph, one window at each length
    # 160..384, twice; benchmarks/results/ort-mem-pattern.json): with it 167 -> 207 -> 228 MiB (the second pass over
    # the same lengths still grew), without it 167 -> 207 -> 207 MiB. Same outputs.
    mem_pattern: bool = False
    # How the shared arena grows: "power_of_two" (ORT's default, kNextPowerOfTwo) or "same_as_requested" (each
    # extension exactly what the run asked for). Measured with window lengths changing per run (v2's fp32 bundle,
    # fused graph, lengths 160..384 twice; benchmarks/results/ort-arena.json): power of two 208 MiB, same as
    # requested 617 MiB (its many small regions do not coalesce). One arena per process: the first runtime opened
    # decides (a later one asking otherwise gets a warning and the first's).
    arena_extend: str = "power_of_two"

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 0 and inter_op_threads >= 1 "
                             f"(got {self.intra_op_threads}, {self.inter_op_threads})")
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            raise ValueError(f"graph_optimization must be disable, basic, extended or all (got {self.graph_optimization!r})")
        if self.arena_extend not in ARENA_EXTEND:
            raise ValueError(f"arena_extend must be power_of_two or same_as_requested (got {self.arena_extend!r})")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise BundleError("running a bundle needs ONNX Runtime: pip install 'elma[runtime]' (on a Jetson, the "
                          "onnxruntime-gpu wheel of the Jetson Zoo), or use --backend torch on a model folder") from err
    return onnxruntime


_ARENA_LOCK = threading.Lock()
_shared_arena: Optional[bool] = None  # None: not tried yet in this process; then whether it is registered
_arena_extend: Optional[str] = None  # the strategy the registered arena grows by
ARENA_EXTEND = {"power_of_two": 0, "same_as_requested": 1}  # OrtArenaCfg's arena_extend_strategy values


def shared_cpu_arena(ort, extend: str = "power_of_two") -> bool:
    """Register one CPU arena allocator with ONNX Runtime's environment, once per process; whether sessions can
    share it (``session.use_env_allocators``). An onnxruntime without the API keeps an arena per session.

    The environment is ORT's one per process, so the arena outlives every session (as a session's own arena
    lives as long as the session): its memory is reused by the next runtime opened, not returned. ``extend``
    (``OrtOptions.arena_extend``) is the first caller's; a later caller asking another is warned and shares it.
    """
    global _shared_arena, _arena_extend
    with _ARENA_LOCK:
        if _shared_arena is None:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                # max_mem 0 (no limit); -1 for the initial chunk and dead bytes per chunk: ORT's defaults
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, ARENA_EXTEND[extend], -1, -1))
                _shared_arena, _arena_extend = True, extend
            except Exception as err:  # an older onnxruntime (no such API) or its own error types
                logger.info("onnxruntime: no shared CPU arena (%s); one arena per session", err)
                _shared_arena = False
        elif _shared_arena and extend != _arena_extend:
            logger.warning("onnxruntime: the shared CPU arena of this process grows %s, not %s (the first runtime "
                           "opened decides)", _arena_extend, extend)
        return _shared_arena


def session_options(ort, options: OrtOptions):
    """``ort.SessionOptions`` from ``OrtOptions``."""
    so = ort.SessionOptions()
    if options.shared_arena and shared_cpu_arena(ort, options.arena_extend):
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = options.mem_pattern
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if options.allow_spinning else "0")
    level = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
             "all": "ORT_ENABLE_ALL"}[options.graph_optimization]
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.log_severity_level = 3
    return so


def choose_providers(available: Sequence[str], wanted: Optional[Sequence[str]] = None) -> List[str]:
    """Execution providers in preference order: ``wanted`` (or TensorRT, CUDA, CPU) that this onnxruntime has.

    Raises:
        ValueError: a wanted provider is not available (naming the ones that are).
    """
    if wanted:
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ValueError(f"ONNX Runtime here has no {', '.join(missing)} (available: {', '.join(available)})")
        return list(wanted)
    chosen = [p for p in ORT_PROVIDERS if p in available]
    return chosen or ["CPUExecutionProvider"]


def provider_entries(providers: Sequence[str], options: OrtOptions, cache_key: str,
                     profile: Optional[Mapping[str, str]] = None) -> List[object]:
    """``providers=`` for ``InferenceSession``: the TensorRT EP with its engine and timing caches on (so engines are
    built once per machine, not at every start; option names from the onnxruntime TensorRT EP documentation) and,
    given ``profile`` (``elma.runtime.ort_trt.profile_options``), shape ranges so lengths do not trigger rebuilds."""
    entries: List[object] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache = Path(options.trt_cache_dir) if options.trt_cache_dir else \
                Path.home() / ".cache" / "elma" / "ort-trt" / cache_key
            entries.append((name, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                                   "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
                                   "trt_fp16_enable": str(options.trt_fp16), "trt_layer_norm_fp32_fallback": "True",
                                   **dict(profile or {})}))
        else:
            entries.append(name)
    return entries


class OrtBackend(Backend):
    """ONNX Runtime over a loaded ``Bundle``: one ``InferenceSession`` per distinct graph file."""

    name = "onnxruntime"
    thread_safe = True  # InferenceSession.run may be called from several threads at once

    def __init__(self, bundle, options: OrtOptions = OrtOptions()):
        ort = import_onnxruntime()
        self.bundle = bundle
        self.options = options
        self.num_layers = bundle.num_layers
        self.providers = choose_providers(ort.get_available_providers(), options.providers)
        so = session_options(ort, options)
        digest = str(bundle.manifest.get("manifest_sha256") or "bundle")[:16]
        kinds = {bundle.embeddings: "embeddings", **{p: "group" for p in bundle.group_files},
                 **{p: "exit" for p in bundle.exits}}
        self._sessions: Dict[Path, object] = {}
        for path in [bundle.embeddings, *bundle.group_files, *bundle.exits]:
            if path not in self._sessions:
                profile = None
                if "TensorrtExecutionProvider" in self.providers:  # one profile per graph: its own inputs
                    from elma.runtime.ort_trt import profile_options

                    profile = profile_options(bundle.io[kinds[path]]["inputs"], options.trt_max_batch,
                                              bundle.max_seq_length, ort.__version__)
                entries = provider_entries(self.providers, options, digest, profile)
                for entry in entries:
                    if isinstance(entry, tuple):
                        Path(entry[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
                try:
                    self._sessions[path] = ort.InferenceSession(str(path), so, providers=entries)
                except Exception as err:  # onnxruntime raises its own exception types
                    raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({err}); re-export the bundle") from err
        self._embed = self._sessions[bundle.embeddings]
        self._session_setup = (ort, so, entries)  # for the fused graph, loaded on first use
        self._fused = None
        self._fused_dtypes: Dict[str, type] = {}
        self._fused_lock = threading.Lock()
        self._layers = [self._sessions[p] for p in bundle.layers]
        self._exits = [self._sessions[p] for p in bundle.exits]
        logger.info("onnxruntime %s: %d sessions for %d slots, providers %s", ort.__version__, len(self._sessions),
                    self.num_layers, ",".join(self.providers))

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def embed(self, input_ids, token_type_ids):
        return self._embed.run(None, {"input_ids": input_ids, "token_type_ids": token_type_ids})[0]

    def run_layer(self, slot, hidden, attention_mask):
        return self._layers[slot].run(None, {"hidden_states": hidden, "attention_mask": attention_mask})[0]

    def run_exit(self, slot, hidden, attention_mask):
        start, end = self._exits[slot].run(None, {"hidden_states": hidden, "attention_mask": attention_mask})
        return start, end

    def run_fused(self, input_ids, attention_mask, token_type_ids):
        """``fused.onnx`` in one session with the same options and providers as the per-layer sessions (loaded on
        first call, so a runtime that never runs it does not hold it)."""
        session = self._fused_session()
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        start, end = session.run(None, {k: np.asarray(v, dtype=self._fused_dtypes[k]) for k, v in feeds.items()
                                        if k in self._fused_dtypes})
        return np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)

    def _fused_session(self):
        with self._fused_lock:
            if self._fused is None:
                ort, so, entries = self._session_setup
                path = self.bundle.fused
                try:
                    self._fused = ort.InferenceSession(str(path), so, providers=entries)
                except Exception as err:  # onnxruntime raises its own exception types
                    raise BundleError(f"{path}: ONNX Runtime cannot load this graph ({err}); re-export the bundle") from err
                self._fused_dtypes = {i.name: (np.int32 if "int32" in i.type else np.int64)
                                      for i in self._fused.get_inputs()}
            return self._fused

    def describe(self) -> str:
        return f"onnxruntime ({','.join(p.replace('ExecutionProvider', '') for p in self.providers)})"

    def close(self) -> None:
        self._fused = None
        self._sessions.clear()
        self._layers = []
        self._exits = []


class TorchBackend(Backend):
    """The PyTorch reference: ``elma.model.steps`` on an ELMA model folder (CPU unless ``device`` says otherwise)."""

    name = "torch"
    thread_safe = True  # modules in eval mode under inference_mode hold no per-call state

    def __init__(self, model_dir: "str | os.PathLike", device: str = "cpu", threads: Optional[int] = None,
                 model=None):
        """``model``: the ``MultiExitQA`` of ``model_dir`` when the caller has loaded it already (``elma demo``)."""
        try:
            import torch

            from elma.model.multi_exit import MultiExitQA
            from elma.model.steps import model_steps
        except ImportError as err:
            raise ModelLoadError("the torch backend needs PyTorch and transformers: pip install 'elma[train]'") from err
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder}: no config.json; the torch backend needs an ELMA model folder")
        model = (model if model is not None else MultiExitQA.from_pretrained(folder)).eval().to(device)
        self.steps = model_steps(model)
        self.device = device
        self.num_layers = self.steps.num_layers
        self.model_dir = folder
        self._fused = None

    def _t(self, array: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def embed(self, input_ids, token_type_ids):
        with self._torch.inference_mode():
            ids = self._t(input_ids.astype(np.int64))
            types = self._t(token_type_ids.astype(np.int64))
            return self.steps.embeddings(ids, types).float().cpu().numpy()

    def run_layer(self, slot, hidden, attention_mask):
        with self._torch.inference_mode():
            group = self.steps.groups[self.steps.layer_groups[slot]]
            return group(self._t(hidden), self._t(attention_mask.astype(np.int64))).float().cpu().numpy()

    def run_exit(self, slot, hidden, attention_mask):
        with self._torch.inference_mode():
            start, end = self.steps.exits[slot](self._t(hidden), self._t(attention_mask.astype(np.int64)))
            return start.float().cpu().numpy(), end.float().cpu().numpy()

    def run_fused(self, input_ids, attention_mask, token_type_ids):
        """The full forward (embeddings, every layer, the last exit head) in one module call."""
        if self._fused is None:
            self._fused = self.steps.fused()
        with self._torch.inference_mode():
            start, end = self._fused(self._t(input_ids.astype(np.int64)), self._t(attention_mask.astype(np.int64)),
                                     self._t(token_type_ids.astype(np.int64)))
            return start.float().cpu().numpy(), end.float().cpu().numpy()

    def describe(self) -> str:
        return f"torch ({self.device}, {self.model_dir.name})"
