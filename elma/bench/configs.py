"""The configurations ``elma-bench`` times side by side: the chosen policy and what a user would run instead.

Each is a ``Configuration``: ``answer(example) -> Outcome`` answers one question at batch 1 (all its
windows), from tokenisation to decoded answer; the schedule (``elma.bench.schedule``) times that call.
Every configuration uses its model's window geometry and the runtime's span decoding (``decode_answer``),
so that only how the model is run differs:

* ``PolicyConfig``: ``Runtime.ask`` with a policy (the chosen one, ``none`` = the per-layer chain at full
  depth, ``EveryExitFullDepth`` = the chain with every exit head, the source of simulated latencies);
* ``FusedConfig``: the backend's ``run_fused`` (the bundle's ``fused.onnx`` on ONNX Runtime, ``fused.plan``
  on TensorRT, the full forward on torch), through the runtime's public backend interface;
* ``TorchEagerConfig``: the ELMA model folder's ``MultiExitQA`` in PyTorch eager, last exit;
* ``HfQaConfig``: a Hugging Face ``AutoModelForQuestionAnswering`` checkpoint (local folder).

torch and transformers are imported inside the configurations that need them.
"""

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elma.bench.results import na_prob
from elma.bench.roofline import question_flops
from elma.data.squad import Example
from elma.runtime.policies import NoExitPolicy
from elma.runtime.spans import decode_answer

logger = logging.getLogger(__name__)

MODEL_WEIGHTS = "model.safetensors"  # elma.model.multi_exit.WEIGHTS_NAME (that module imports torch)


@dataclass(frozen=True)
class Outcome:
    """One question's answer under one configuration (the schedule adds the time)."""

    prediction: str  # "" = no answer
    na_prob: float
    exit_layer: int  # deepest window's exit
    window_layers: Tuple[int, ...]
    layer_latency_ms: Tuple[float, ...] = ()  # per step run (runtime configurations)
    unsolved: bool = False
    token_layers: int = 0  # tokens times layers run (runtime configurations; 0: from the window lengths)


@dataclass(frozen=True)
class ModelDims:
    """What the FLOPs count needs of a model."""

    hidden_size: int
    ffn_size: int
    ffn_source: str  # "config.json", "--ffn-size" or "assumed 4 x hidden"


class Configuration:
    """A named way of answering questions. Subclasses set the class fields and ``answer``."""

    name = "configuration"  # the report's row label
    kind = "base"  # ConfigResult.kind
    num_layers = 0  # depth, for the exit histogram

    def answer(self, ex: Example) -> Outcome:
        raise NotImplementedError

    def flops(self, ex: Example, outcome: Outcome) -> float:
        """FLOPs of the question at its exit layers (untimed; 0 when unknown)."""
        return 0.0

    def window_tokens(self, ex: Example) -> List[int]:
        """Tokens of each window the question is cut into (untimed; [] when unknown)."""
        return []

    def token_layers(self, ex: Example, window_layers: Sequence[int]) -> int:
        """Tokens times layers of the question when every window runs all its tokens to its exit (untimed; 0 when
        the window lengths are unknown). Runtime answers with skimming carry their own count instead."""
        lengths = self.window_tokens(ex)
        layers = tuple(window_layers) if len(window_layers) == len(lengths) else (max(window_layers),) * len(lengths)
        return int(sum(t * layer for t, layer in zip(lengths, layers)))

    def close(self) -> None:
        """Free what the configuration opened itself (idempotent)."""


class EveryExitFullDepth(NoExitPolicy):
    """Full depth with every exit head run and decided on: what an early-exit policy pays per layer.

    ``none`` itself skips the heads before the last layer; simulated latencies need the steps with their heads.
    """

    def reads_exit(self, layer: int) -> bool:
        return True


class RuntimeFlops:
    """FLOPs of a question on a runtime's model, from its window lengths (tokenised once, outside any timing;
    one per runtime, shared by the configurations that run on it)."""

    def __init__(self, rt, dims: ModelDims):
        self.rt, self.dims = rt, dims
        self._lengths: Dict[str, List[int]] = {}

    def lengths(self, ex: Example) -> List[int]:
        """Tokens of each of the question's windows (cached: a few ints per question)."""
        if ex.qid not in self._lengths:
            self._lengths[ex.qid] = [len(w) for w in self.rt.windows([(ex.question, ex.context)])]
        return self._lengths[ex.qid]

    def __call__(self, ex: Example, window_layers: Sequence[int]) -> float:
        lengths = self.lengths(ex)
        layers = tuple(window_layers) if len(window_layers) == len(lengths) else (max(window_layers),) * len(lengths)
        return question_flops(lengths, layers, self.dims.hidden_size, self.dims.ffn_size)


class PolicyConfig(Configuration):
    """``Runtime.ask`` with one policy."""

    def __init__(self, rt, policy, name: str, kind: str, flops: Optional[RuntimeFlops] = None):
        self.rt, self.policy, self.name, self.kind = rt, rt.resolve_policy(policy), name, kind
        self.num_layers = rt.num_layers
        self._flops = flops

    def answer(self, ex: Example) -> Outcome:
        a = self.rt.ask(ex.question, ex.context, policy=self.policy)
        return Outcome(a.text, na_prob(a.score, self.rt.info.null_threshold(a.exit_layer)), a.exit_layer,
                       tuple(a.window_exit_layers), tuple(a.layer_latency_ms), a.unsolved, a.token_layers)

    def flops(self, ex: Example, outcome: Outcome) -> float:
        return self._flops(ex, outcome.window_layers) if self._flops else 0.0

    def window_tokens(self, ex: Example) -> List[int]:
        return self._flops.lengths(ex) if self._flops else []


def batch_windows(windows, pad_id: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, token_type_ids), each (B, T) int32, of a question's windows, padded."""
    width = max(len(w) for w in windows)
    ids = np.full((len(windows), width), pad_id, dtype=np.int32)  # (B, T)
    types = np.zeros((len(windows), width), dtype=np.int32)
    mask = np.zeros((len(windows), width), dtype=np.int32)
    for i, w in enumerate(windows):
        n = len(w)
        ids[i, :n], types[i, :n], mask[i, :n] = w.input_ids, w.token_type_ids, 1
    return ids, mask, types


def _full_depth_outcome(rt, ex: Example, windows, start, end, num_layers: int) -> Outcome:
    threshold = rt.info.null_threshold(num_layers)
    span = decode_answer(ex.context, [s[:len(w)] for s, w in zip(start, windows)], [e[:len(w)] for e, w in zip(end, windows)],
                         [w.offsets for w in windows], threshold)
    return Outcome(span.prediction, na_prob(span.span_score - span.null_score, threshold), num_layers,
                   (num_layers,) * len(windows))


class FusedConfig(Configuration):
    """The runtime's backend runs the whole model in one call (``Backend.run_fused``)."""

    kind = "fused"

    def __init__(self, rt, name: str, kind: str = "fused", flops: Optional[RuntimeFlops] = None):
        self.rt, self.name, self.kind = rt, name, kind
        self.num_layers = rt.num_layers
        self._flops = flops

    def answer(self, ex: Example) -> Outcome:
        windows = self.rt.windows([(ex.question, ex.context)])
        ids, mask, types = batch_windows(windows, self.rt.pad_id)
        start, end = self.rt.backend.run_fused(ids, mask, types)  # (B, T) each
        return _full_depth_outcome(self.rt, ex, windows, start, end, self.num_layers)

    def flops(self, ex: Example, outcome: Outcome) -> float:
        return self._flops(ex, outcome.window_layers) if self._flops else 0.0

    def window_tokens(self, ex: Example) -> List[int]:
        return self._flops.lengths(ex) if self._flops else []


@contextmanager
def onednn(torch, enabled: bool):
    """PyTorch's oneDNN (``torch.backends.mkldnn.enabled``) set for the block, restored after.

    Off, CPU linear layers run MKL's GEMM. On (PyTorch's default), oneDNN builds and caches a primitive (with its
    JIT kernel) per input shape, and the window length changes per question: measured on the PyTorch eager
    baseline of MiniLM-L6 (400 dev questions after 8 of warm-up; ``benchmarks/torch_onednn.py``,
    ``benchmarks/results/torch-onednn.json``) resident memory grew 54.9 MiB with it on, still growing, against
    14.2 MiB with it off, flat after the first hundred; off was as fast (1.000x [0.963, 1.025]), same answers.
    """
    backends = torch.backends.mkldnn
    before = backends.enabled
    backends.enabled = enabled
    try:
        yield
    finally:
        backends.enabled = before


class TorchEagerConfig(Configuration):
    """``MultiExitQA`` of an ELMA model folder in PyTorch eager, its last exit's logits; oneDNN off unless asked
    (``onednn``: see there; PyTorch then runs MKL's GEMM)."""

    kind = "torch-eager"
    name = "PyTorch eager, full depth (last exit)"

    def __init__(self, model_dir, rt, flops: Optional[RuntimeFlops] = None, use_onednn: bool = False):
        import torch

        from elma.model.multi_exit import MultiExitQA

        self._torch = torch
        self.use_onednn = use_onednn
        self.model = MultiExitQA.from_pretrained(model_dir).eval()
        if self.model.num_exits != rt.num_layers:
            raise ValueError(f"{model_dir}: {self.model.num_exits} exits, the benchmarked model has {rt.num_layers} layers")
        self.rt, self.num_layers = rt, rt.num_layers
        self._flops = flops

    def answer(self, ex: Example) -> Outcome:
        windows = self.rt.windows([(ex.question, ex.context)])
        ids, mask, types = (self._torch.from_numpy(a.astype(np.int64)) for a in batch_windows(windows, self.rt.pad_id))
        with self._torch.inference_mode(), onednn(self._torch, self.use_onednn):
            start, end = self.model(ids, mask, types)  # (L, B, T)
        return _full_depth_outcome(self.rt, ex, windows, start[-1].float().numpy(), end[-1].float().numpy(),
                                   self.num_layers)

    def flops(self, ex: Example, outcome: Outcome) -> float:
        return self._flops(ex, outcome.window_layers) if self._flops else 0.0

    def window_tokens(self, ex: Example) -> List[int]:
        return self._flops.lengths(ex) if self._flops else []


class HfQaConfig(Configuration):
    """A Hugging Face ``AutoModelForQuestionAnswering`` checkpoint (a local folder) in PyTorch eager.

    The ``question-answering`` pipeline is gone from transformers 5, so this does what it did: the tokenizer
    cuts the context into overflowing windows (``truncation="only_second"``, the benchmarked model's window
    length and stride), the model gives start/end logits per window, and the best span over the windows wins
    against the smallest CLS score (threshold 0, the pipeline's ``handle_impossible_answer``).
    """

    kind = "hf-qa"

    def __init__(self, checkpoint, geometry, use_onednn: bool = False):
        import torch
        from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

        self._torch = torch
        self.use_onednn = use_onednn  # as in TorchEagerConfig
        config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
        self.model = AutoModelForQuestionAnswering.from_pretrained(checkpoint, local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
        self.num_layers = int(config.num_hidden_layers)
        self.hidden = int(config.hidden_size)
        self.ffn = int(getattr(config, "intermediate_size", 4 * config.hidden_size))
        self.geometry = geometry
        self.name = f"transformers QA {Path(checkpoint).name}, PyTorch eager"
        self._window_tokens: Dict[str, List[int]] = {}

    def answer(self, ex: Example) -> Outcome:
        g = self.geometry
        enc = self.tokenizer(ex.question, ex.context, truncation="only_second", max_length=g.max_seq_length,
                             stride=g.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                             padding="longest", return_tensors="pt")
        offsets = []
        for w in range(enc["input_ids"].shape[0]):
            seq_ids = enc.sequence_ids(w)
            n = int(enc["attention_mask"][w].sum())
            offsets.append([tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w].tolist()[:n], seq_ids[:n])])
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        with self._torch.inference_mode(), onednn(self._torch, self.use_onednn):
            logits = self.model(**inputs)
        start, end = logits.start_logits.float().numpy(), logits.end_logits.float().numpy()  # (W, T)
        span = decode_answer(ex.context, [s[:len(o)] for s, o in zip(start, offsets)],
                             [e[:len(o)] for e, o in zip(end, offsets)], offsets, 0.0)
        self._window_tokens[ex.qid] = [len(o) for o in offsets]
        L = self.num_layers
        return Outcome(span.prediction, na_prob(span.span_score - span.null_score, 0.0), L, (L,) * len(offsets))

    def window_tokens(self, ex: Example) -> List[int]:
        return self._window_tokens.get(ex.qid, [])

    def flops(self, ex: Example, outcome: Outcome) -> float:
        lengths = self._window_tokens.get(ex.qid, [])
        return question_flops(lengths, (self.num_layers,) * len(lengths), self.hidden, self.ffn) if lengths else 0.0


# ---- what the model is ----------------------------------------------------------------------------------------


def model_config_json(folder) -> Optional[dict]:
    path = Path(folder) / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def bundle_manifest(rt) -> Optional[dict]:
    """The manifest of the runtime's bundle (read from its folder), None for a model folder."""
    if rt.info.kind != "bundle":
        return None
    from elma.runtime.bundle import read_manifest

    return read_manifest(Path(rt.info.path))


def model_dims(rt, torch_model: Optional[str], ffn_size: Optional[int]) -> ModelDims:
    """Hidden and feed-forward widths of the runtime's model, from its manifest or config.json (files only)."""
    manifest = bundle_manifest(rt)
    cfg = model_config_json(rt.info.path) if manifest is None else None
    if manifest is not None:
        hidden = int(manifest["hidden_size"])
    elif cfg is not None:
        hidden = int(cfg["hidden_size"])
    else:
        raise ValueError(f"{rt.info.path}: cannot tell the model's hidden size")
    if ffn_size:
        return ModelDims(hidden, int(ffn_size), "--ffn-size")
    for folder_cfg in (model_config_json(torch_model) if torch_model else None, cfg):
        if folder_cfg and folder_cfg.get("intermediate_size"):
            return ModelDims(hidden, int(folder_cfg["intermediate_size"]), "config.json")
    return ModelDims(hidden, 4 * hidden, "assumed 4 x hidden")


def precision_label(rt) -> str:
    """The bundle's precision ("fp32", "int8", ...) or "torch" for a model folder."""
    manifest = bundle_manifest(rt)
    return str(manifest.get("precision", "?")) if manifest is not None else "torch"


def source_model_folder(rt, search: Sequence[Path] = ()) -> Optional[Path]:
    """The ELMA model folder a bundle was exported from, when it can be found and its weights are the ones the
    manifest records (``source``): beside the bundle, in ``search``, or the shipped model's folder."""
    manifest = bundle_manifest(rt)
    source = (manifest or {}).get("source") or {}
    name, digest = source.get("model_folder"), source.get("weights_sha256")
    if not name or not digest:
        return None
    from elma.paths import default_model_dir
    from elma.runtime.bundle import sha256_file

    bundle = Path(rt.info.path)
    for folder in [*(Path(s) / name for s in search), bundle.parent / name, default_model_dir().parent / name,
                   Path.cwd() / name]:
        weights = folder / MODEL_WEIGHTS
        if weights.is_file() and sha256_file(weights) == digest:
            return folder
    return None
