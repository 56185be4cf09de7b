"""The early-exit runtime: load a model once, answer questions layer by layer.

    rt = Runtime.open("bundles/minilm")             # a bundle (ONNX Runtime), or an ELMA model folder (torch)
    a = rt.ask("Who led the raiders?", passage)     # -> Answer(text, exit_layer, latency_ms, unsolved, ...)
    answers = rt.ask_batch([(q1, c1), (q2, c2)])

The loop (one step per layer slot, after the embeddings):

    hidden = layer[l](hidden, mask); start, end = exit[l](hidden, mask); decision = policy.decide(l + 1, ...)

**Rows and windows.** A long context is cut into overlapping windows (the
model's window geometry); every window is one row of the batch. Each row runs
the loop on its own: its own policy state, and it leaves the batch when its
policy says exit (or at the last allowed layer). Only the rows still unfinished
run the next layer, and the batch is also cut to the longest remaining row.

**Skimming.** A policy with skim stages (``entropy:2.4,2.9+skim:2,0.001``,
``elma.runtime.skim``) drops, after each stage's layer, the context tokens that
layer's exit head rules out; each row keeps its own tokens, the batch is
re-padded to the longest kept row and gathered by the backend
(``select_tokens``), and the next layers and exit heads run on the shorter
rows. The policy still sees each row's logits at their original positions
(dropped ones at -inf and outside the mask), so stateful policies compare like
with like, and span decoding maps kept tokens back to character offsets.
``Answer.tokens_per_layer`` says how many tokens each layer ran.

**When a multi-window question exits.** Per window: each window stops at its
own exit layer, and the answer is decoded across the windows with each window's
exit-layer logits (``decode_answer``; the null score is the smallest CLS score
over the windows, as in the core span decoding). The question's ``exit_layer``
is the deepest of its windows' exit layers (what it cost), its no-answer
threshold the one of that layer, and it is ``unsolved`` when any of its windows
reached the last allowed layer without its policy saying exit.

**Thread safety.** A ``Runtime`` holds no per-question state: policies are pure
and their state lives in local variables of the call. One runtime may be shared
by threads: tokenisation (``tokenizers`` truncation settings are mutable) is
done under a lock, and so is the whole loop when the backend is not thread-safe
(TensorRT execution contexts); ONNX Runtime and torch steps run concurrently.
"""

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from elma.data.features import Window, WindowConfig, build_windows
from elma.data.squad import Example
from elma.errors import BundleError, ModelLoadError
from elma.runtime.defaults import SOURCE_NONE, SOURCE_REQUESTED, from_manifest, from_model_config
from elma.runtime.model_config import CONFIG_NAME, TOKENIZER_NAME, read_model_config
from elma.runtime.policies import ExitPolicy, NoExitPolicy, StaticPolicy, parse_policy
from elma.runtime.skim import gather_index, keep_positions
from elma.runtime.spans import SpanAnswer, decode_answer
from elma.runtime.stats import max_prob

logger = logging.getLogger(__name__)

MAX_CONTEXT_CHARS = 1_000_000  # a passage longer than this (about 200k words) is refused: hours of windows on a Jetson
MAX_QUESTION_CHARS = 10_000
TOP_K = 20  # span candidates per start and end (n_best)
MAX_ANSWER_TOKENS = 30


@dataclass(frozen=True)
class Answer:
    """The answer to one question, with what it cost.

    ``layer_latency_ms[l]`` is the wall time of step ``l`` (layer, exit head, exit decision, and the row and
    token selection that follows) of the batch the question ran in; ``latency_ms`` adds tokenisation,
    embeddings and span decoding. In ``ask_batch`` the steps are shared by the rows of the batch, so these
    are the times the question waited, not its share.
    """

    text: str  # the answer; "" when no_answer
    char_start: int  # in the context; -1 when no_answer
    char_end: int  # exclusive; -1 when no_answer
    score: float  # best span's start+end logit minus the null (CLS) score; the no-answer verdict compares it
    no_answer: bool
    exit_layer: int  # 1-based; the deepest exit among the question's windows
    num_layers: int  # of the model
    layer_latency_ms: Tuple[float, ...]  # per step run, length exit_layer
    latency_ms: float  # total, tokenisation to decoded answer
    unsolved: bool  # no exit was confident by the last allowed layer (offload candidate)
    policy: str  # spec of the policy that decided
    windows: int = 1  # context windows the question was cut into
    window_exit_layers: Tuple[int, ...] = ()  # per window
    best_span: str = ""  # the best span even when the verdict is no-answer
    policy_source: str = ""  # where the policy came from: "calibrated default", "no calibrated default", "requested"
    tokens_per_layer: Tuple[int, ...] = ()  # per step run: tokens of the question's windows that ran it (no padding)
    exit_confidence: float = float("nan")  # smallest over the windows of min(max start prob, max end prob) at the exit

    @property
    def token_layers(self) -> int:
        """Tokens times layers run, over the question's windows: what skimming and early exit save."""
        return sum(self.tokens_per_layer)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know of a model besides its steps (from a bundle manifest or a model folder)."""

    path: Path
    kind: str  # "bundle" or "model"
    model_type: str
    num_layers: int
    windows: WindowConfig
    null_thresholds: Tuple[float, ...]  # per exit; () means 0 everywhere
    tokenizer: Path
    default_policy: str = "none"  # calibrated policy (``elma.runtime.defaults``), else full depth
    policy_source: str = SOURCE_NONE  # where default_policy comes from (``elma.runtime.defaults``)

    def null_threshold(self, exit_layer: int) -> float:
        return self.null_thresholds[exit_layer - 1] if self.null_thresholds else 0.0


def is_bundle(path: Union[str, os.PathLike]) -> bool:
    return (Path(path) / "manifest.json").is_file()


def bundle_info(bundle) -> ModelInfo:
    """``ModelInfo`` of a loaded ``Bundle``."""
    w = bundle.manifest.get("windows") or {}
    try:
        windows = WindowConfig(int(w.get("max_seq_length", bundle.max_seq_length)), int(w.get("doc_stride", 128)),
                               int(w.get("max_query_length", 64)))
    except (TypeError, ValueError) as err:
        raise BundleError(f"{bundle.root}: manifest 'windows' is not a usable window geometry ({err}); re-export") from err
    stored = from_manifest(bundle.manifest, bundle.root)
    return ModelInfo(bundle.root, "bundle", bundle.backbone.model_type, bundle.num_layers, windows,
                     tuple(bundle.null_thresholds), bundle.tokenizer, stored.spec, stored.source)


def model_folder_info(folder: Union[str, os.PathLike]) -> ModelInfo:
    """``ModelInfo`` of an ELMA model folder, read from its config.json (no torch needed)."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    cfg = read_model_config(folder)
    try:
        elma = cfg["elma"]
        windows = WindowConfig(int(elma.get("max_seq_length", 384)), int(elma.get("doc_stride", 128)),
                               int(elma.get("max_query_length", 64)))
        num_layers = int(cfg["num_hidden_layers"] if "num_hidden_layers" in cfg else cfg["n_layers"])  # DistilBERT: n_layers
        thresholds = tuple(float(t) for t in elma.get("null_thresholds") or ())
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{cfg_path}: not an ELMA model config ({err}); train one with `elma train`") from err
    tokenizer = folder / TOKENIZER_NAME
    if not tokenizer.is_file():
        raise ModelLoadError(f"{folder}: no tokenizer.json; the runtime needs the fast tokenizer (`elma convert` writes it)")
    stored = from_model_config(cfg, folder)
    return ModelInfo(folder, "model", str(cfg.get("model_type")), num_layers, windows, thresholds, tokenizer,
                     stored.spec, stored.source)


def validate_input(question: str, context: str) -> None:
    """Refuse what cannot be a question about a passage, with a message a person can act on.

    Raises:
        ValueError: empty or oversized question or context, or a context holding NUL bytes (binary data).
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty; ask something about the passage")
    if not isinstance(context, str) or not context.strip():
        raise ValueError("the context is empty; give the passage the question is about")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"the question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}")
    if len(context) > MAX_CONTEXT_CHARS:
        raise ValueError(f"the context is {len(context)} characters long; the limit is {MAX_CONTEXT_CHARS} "
                         f"(split the document and ask about the relevant part)")
    if "\x00" in context or "\x00" in question:
        raise ValueError("the context holds NUL bytes: it looks like binary data, not text")


@dataclass
class _Row:
    """One window in flight (mutable bookkeeping of one call, never shared)."""

    window: Window
    length: int  # tokens, without padding
    answer_mask: np.ndarray  # (length,) bool: CLS and context tokens, what the exit distributions range over
    context: np.ndarray  # (length,) bool: context tokens, the ones skimming may drop
    positions: Optional[np.ndarray] = None  # original positions of the tokens still run (None: all; after skimming)
    tokens: List[int] = field(default_factory=list)  # tokens run per step
    state: Any = None
    exit_layer: int = 0
    confident: bool = False
    start: Optional[np.ndarray] = None  # (length,) logits at the exit layer
    end: Optional[np.ndarray] = None
    all_logits: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # every exit, when recording
    live_mask: Optional[np.ndarray] = None  # answer_mask without the dropped tokens (None: answer_mask)

    @property
    def current(self) -> int:
        """Tokens the row runs now."""
        return self.length if self.positions is None else len(self.positions)

    def original(self, logits: np.ndarray) -> np.ndarray:
        """(current,) logits -> (length,) at the original positions; dropped tokens at -inf."""
        if self.positions is None:
            return logits
        out = np.full(self.length, -np.inf, dtype=np.float32)
        out[self.positions] = logits
        return out

    def skim(self, keep: np.ndarray) -> None:
        """Keep only ``keep`` (indices into the current tokens)."""
        current = np.arange(self.length) if self.positions is None else self.positions
        self.positions = current[keep]
        live = np.zeros(self.length, dtype=bool)
        live[self.positions] = True
        self.live_mask = self.answer_mask & live

    def decode_offsets(self) -> List[Optional[Tuple[int, int]]]:
        """The window's offsets with None at dropped tokens: span decoding never picks them."""
        if self.positions is None:
            return self.window.offsets
        offsets: List[Optional[Tuple[int, int]]] = [None] * self.length
        for p in self.positions:
            offsets[p] = self.window.offsets[p]
        return offsets


class Runtime:
    """A loaded model answering questions layer by layer; see the module docstring.

    Args:
        backend: the steps (``OrtBackend``, ``TorchBackend``, ``TensorRTBackend``).
        info: the model's windows, thresholds, tokenizer and calibrated default policy.
        policy: default exit policy (a spec string or an ``ExitPolicy``); None: ``info.default_policy``, the
            model's calibrated default (``elma.runtime.defaults``). ``policy_source`` says which.
        tokenizer: a ``tokenizers.Tokenizer``; None loads ``info.tokenizer``.
    """

    def __init__(self, backend, info: ModelInfo, policy: Union[None, str, ExitPolicy] = None, tokenizer=None):
        from elma.tokenization import load_tokenizer, pad_token_id

        if backend.num_layers != info.num_layers:
            raise ModelLoadError(f"{info.path}: the backend runs {backend.num_layers} layers, the model has {info.num_layers}")
        self.backend = backend
        self.info = info
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(info.tokenizer)
        self.pad_id = pad_token_id(self.tokenizer)
        self.policy = self.resolve_policy("none")
        self.policy_source = SOURCE_REQUESTED if policy is not None else info.policy_source
        if policy is not None:
            self.policy = self.resolve_policy(policy)
        else:
            try:
                self.policy = self.resolve_policy(info.default_policy)
            except ValueError as err:
                error = BundleError if info.kind == "bundle" else ModelLoadError
                raise error(f"{info.path}: calibrated default policy {info.default_policy!r} is not usable "
                            f"({err}); run `elma calibrate` again") from err
        self._tokenizer_lock = threading.Lock()
        self._backend_lock = None if backend.thread_safe else threading.Lock()

    @classmethod
    def open(cls, path: Union[str, os.PathLike], backend: Optional[str] = None,
             policy: Union[None, str, ExitPolicy] = None, verify_checksums: bool = True, **backend_options) -> "Runtime":
        """Load a bundle (backends onnxruntime, tensorrt) or an ELMA model folder (torch).

        Args:
            path: bundle folder (has manifest.json) or model folder (has config.json).
            backend: "onnxruntime" (default for bundles), "tensorrt", or "torch" (default and only choice for
                model folders).
            backend_options: passed to the backend (``options=OrtOptions(...)`` for onnxruntime, ...).

        Raises:
            BundleError, ModelLoadError, EngineLoadError, TensorRTUnavailable: the model cannot be loaded here.
            ValueError: an unknown backend or a bad policy.
        """
        from elma.runtime.backends import BACKENDS

        path = Path(path)
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if is_bundle(path):
            from elma.runtime.bundle import load_bundle

            bundle = load_bundle(path, verify_checksums=verify_checksums)
            info = bundle_info(bundle)
            name = backend or "onnxruntime"
            if name == "torch":
                raise ValueError(f"{path} is a bundle; the torch backend runs an ELMA model folder (use onnxruntime "
                                 f"or tensorrt here)")
            if name == "tensorrt":
                from elma.runtime.trt_backend import TensorRTBackend

                impl = TensorRTBackend(bundle, **backend_options)
            else:
                from elma.runtime.backends import OrtBackend

                impl = OrtBackend(bundle, **backend_options)
        else:
            if not path.is_dir():
                raise ModelLoadError(f"{path}: no such bundle or model folder")
            info = model_folder_info(path)
            if backend not in (None, "torch"):
                raise ValueError(f"{path} is a PyTorch model folder, not a bundle: use --backend torch, or export a "
                                 f"bundle with `elma export {path} -o BUNDLE` for {backend}")
            from elma.runtime.backends import TorchBackend

            impl = TorchBackend(path, **backend_options)
        try:
            return cls(impl, info, policy)
        except BaseException:
            impl.close()
            raise

    # ---- public API -----------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return self.info.num_layers

    def resolve_policy(self, policy: Union[None, str, ExitPolicy]) -> ExitPolicy:
        """An ``ExitPolicy`` from a spec or a policy (None: this runtime's default), checked against the model."""
        if policy is None:
            return self.policy
        chosen = parse_policy(policy) if isinstance(policy, str) else policy
        if not isinstance(chosen, ExitPolicy):
            raise ValueError(f"policy must be a spec string or an ExitPolicy (got {type(policy).__name__})")
        base = chosen.exit_policy
        if isinstance(base, StaticPolicy) and base.layer > self.num_layers:
            raise ValueError(f"static exit layer {base.layer} is beyond the model's {self.num_layers} layers")
        for stage in chosen.skim_stages:
            if stage.layer >= self.num_layers:
                raise ValueError(f"skim after layer {stage.layer} leaves no layer to run on the kept tokens "
                                 f"(the model has {self.num_layers} layers)")
        return chosen

    def ask(self, question: str, context: str, policy: Union[None, str, ExitPolicy] = None,
            max_layer: Optional[int] = None) -> Answer:
        """Answer one question about ``context``.

        Args:
            policy: exit policy for this call (spec or object); None: the runtime's default.
            max_layer: last layer allowed (1-based, default: all); a question not confident by then is ``unsolved``.

        Raises:
            ValueError: bad input (see ``validate_input``), policy or ``max_layer``.
        """
        return self.ask_batch([(question, context)], policy, max_layer)[0]

    def ask_batch(self, items: Sequence[Tuple[str, str]], policy: Union[None, str, ExitPolicy] = None,
                  max_layer: Optional[int] = None) -> List[Answer]:
        """Answer many (question, context) pairs in one batch whose rows leave as they exit.

        Each answer equals what ``ask`` gives for the same question (up to float rounding of the padded batch).
        """
        began = time.perf_counter()
        chosen = self.resolve_policy(policy)
        last = self._max_layer(max_layer)
        for question, context in items:
            validate_input(question, context)
        if not items:
            return []
        windows = self.windows(items)
        rows, step_ms, prep_ms = self._run(windows, chosen, last, began=began)
        source = self.policy_source if policy is None else SOURCE_REQUESTED
        return self._answers(items, rows, step_ms, prep_ms, chosen, source)

    def record_exits(self, items: Sequence[Tuple[str, str]],
                     skim: Union[None, str, ExitPolicy] = None) -> List[List[Tuple[Window, np.ndarray]]]:
        """Run every layer once and keep every exit's logits (what calibration simulates policies on).

        Args:
            skim: None, or a full-depth policy with skim stages (``"none+skim:2,0.001"``): the layers after each
                stage run on the kept tokens, as any policy with those stages runs them.

        Returns:
            Per question, per window: (window, (L, 2, T_w) float32 logits of every exit); a token dropped by
            skimming has -inf logits at the exits after its stage (so the finite entries of exit ``l`` are the
            tokens layer ``l`` ran).
        """
        policy = NoExitPolicy() if skim is None else self.resolve_policy(skim)
        if not isinstance(policy.exit_policy, NoExitPolicy):
            raise ValueError(f"record_exits runs full depth: give skim stages after none, e.g. none+skim:2,0.001 "
                             f"(got {policy.spec})")
        for question, context in items:
            validate_input(question, context)
        windows = self.windows(items)
        rows, _, _ = self._run(windows, policy, self.num_layers, record=True)
        out: List[List[Tuple[Window, np.ndarray]]] = [[] for _ in items]
        for row in rows:
            logits = np.stack([np.stack([s, e]) for s, e in row.all_logits])  # (L, 2, T_w)
            out[row.window.example_index].append((row.window, logits))
        return out

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the loop ---------------------------------------------------------------------------------------------

    def _max_layer(self, max_layer: Optional[int]) -> int:
        if max_layer is None:
            return self.num_layers
        if not 1 <= int(max_layer) <= self.num_layers:
            raise ValueError(f"max_layer must be in 1..{self.num_layers} (got {max_layer})")
        return int(max_layer)

    def windows(self, items: Sequence[Tuple[str, str]]) -> List[Window]:
        """The model inputs of (question, context) pairs: one or more windows each, in order (thread-safe)."""
        examples = [Example(str(i), "", q, c, (), False) for i, (q, c) in enumerate(items)]
        with self._tokenizer_lock:  # build_windows sets truncation on the shared tokenizer
            return build_windows(examples, self.tokenizer, self.info.windows, with_labels=False)

    def _run(self, windows: Sequence[Window], policy: ExitPolicy, last: int, record: bool = False,
             began: Optional[float] = None) -> Tuple[List[_Row], List[float], float]:
        if self._backend_lock is None:
            return self._loop(windows, policy, last, record, began)
        with self._backend_lock:
            return self._loop(windows, policy, last, record, began)

    def _loop(self, windows: Sequence[Window], policy: ExitPolicy, last: int, record: bool,
              began: Optional[float]) -> Tuple[List[_Row], List[float], float]:
        began = time.perf_counter() if began is None else began
        rows = []
        for w in windows:
            context = np.array([o is not None for o in w.offsets], dtype=bool)
            answer_mask = context.copy()
            answer_mask[0] = True  # CLS: the no-answer choice
            rows.append(_Row(w, len(w), answer_mask, context))
        n, width = len(rows), max(r.length for r in rows)
        ids = np.full((n, width), self.pad_id, dtype=np.int32)  # (B, T)
        types = np.zeros((n, width), dtype=np.int32)
        for i, r in enumerate(rows):
            ids[i, :r.length] = r.window.input_ids
            types[i, :r.length] = r.window.token_type_ids
        hidden = self.backend.embed(ids, types)  # (B, T, H)
        prep_ms = (time.perf_counter() - began) * 1e3
        active = np.arange(n)
        lengths = np.array([r.length for r in rows])  # (B,) tokens each active row runs
        step_ms: List[float] = []
        for slot in range(last):
            t0 = time.perf_counter()
            active_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32)  # (B, T)
            for i, length in zip(active, lengths):
                rows[i].tokens.append(int(length))
            hidden = self.backend.run_layer(slot, hidden, active_mask)
            layer = slot + 1
            stage = policy.skim_stage(layer) if layer < last else None
            if not (record or layer == last or stage is not None or policy.reads_exit(layer)):
                step_ms.append((time.perf_counter() - t0) * 1e3)  # full depth, static:k: no head to run
                continue
            start, end = self.backend.run_exit(slot, hidden, active_mask)  # (B, T) each
            keep: List[int] = []  # batch rows that run on
            cuts: Dict[int, np.ndarray] = {}  # batch row -> its kept tokens, where skimming dropped some
            for j, i in enumerate(active):
                r = rows[i]
                s = np.asarray(start[j, :lengths[j]], dtype=np.float32)
                e = np.asarray(end[j, :lengths[j]], dtype=np.float32)
                full_s, full_e = r.original(s), r.original(e)
                if record:
                    r.all_logits.append((full_s.copy(), full_e.copy()))
                decision = policy.decide(layer, full_s, full_e, r.answer_mask if r.live_mask is None else r.live_mask,
                                         r.state)
                r.state = decision.state
                if decision.exit or layer == last:
                    r.exit_layer, r.confident = layer, decision.exit
                    r.start, r.end = full_s.copy(), full_e.copy()
                    continue
                keep.append(j)
                if stage is not None:
                    current = slice(None) if r.positions is None else r.positions
                    kept = keep_positions(s, e, r.answer_mask[current], r.context[current], stage.threshold,
                                          stage.margin, stage.spans, MAX_ANSWER_TOKENS)
                    if len(kept) < lengths[j]:
                        r.skim(kept)
                        cuts[j] = kept
            if keep and cuts:  # re-pad the rows that run on to the longest kept row; gather on the backend
                kept_rows = [cuts.get(j, np.arange(lengths[j])) for j in keep]
                active, lengths = active[keep], np.array([len(k) for k in kept_rows])
                width = int(lengths.max())
                hidden = self.backend.select_tokens(hidden, keep, gather_index(kept_rows, width))
            elif keep and len(keep) < len(active):  # rows that exited leave the batch; cut it to the longest row left
                active, lengths = active[keep], lengths[keep]
                width = int(lengths.max())
                hidden = self.backend.select_rows(hidden, keep, width)
            step_ms.append((time.perf_counter() - t0) * 1e3)
            if not keep:
                break
        return rows, step_ms, prep_ms

    def _answers(self, items, rows: Sequence[_Row], step_ms: Sequence[float], prep_ms: float, policy: ExitPolicy,
                 source: str) -> List[Answer]:
        per_question: List[List[_Row]] = [[] for _ in items]
        for r in rows:
            per_question[r.window.example_index].append(r)
        answers = []
        for (_question, context), qrows in zip(items, per_question):
            t0 = time.perf_counter()
            exit_layer = max(r.exit_layer for r in qrows)
            span = decode_answer(context, [r.start for r in qrows], [r.end for r in qrows],
                                 [r.decode_offsets() for r in qrows], self.info.null_threshold(exit_layer), TOP_K,
                                 MAX_ANSWER_TOKENS)
            decode_ms = (time.perf_counter() - t0) * 1e3
            steps = tuple(step_ms[:exit_layer])
            unsolved = not isinstance(policy.exit_policy, NoExitPolicy) and not all(r.confident for r in qrows)
            tokens = tuple(sum(r.tokens[k] for r in qrows if k < len(r.tokens)) for k in range(exit_layer))
            confidence = min(_confidence(r) for r in qrows)
            answers.append(_answer(span, exit_layer, self.num_layers, steps, prep_ms + sum(steps) + decode_ms, unsolved,
                                   policy.spec, tuple(r.exit_layer for r in qrows), source, tokens, confidence))
        return answers


def _confidence(row: _Row) -> float:
    """The row's exit confidence: the smaller of its start and end maximum probability at its exit layer."""
    mask = row.answer_mask if row.live_mask is None else row.live_mask
    return float(min(max_prob(row.start, mask), max_prob(row.end, mask)))


def _answer(span: SpanAnswer, exit_layer: int, num_layers: int, steps: Tuple[float, ...], latency_ms: float,
            unsolved: bool, policy: str, window_layers: Tuple[int, ...], source: str = "",
            tokens: Tuple[int, ...] = (), confidence: float = float("nan")) -> Answer:
    score = span.span_score - span.null_score if np.isfinite(span.span_score) else float("-inf")
    if span.no_answer:
        return Answer("", -1, -1, score, True, exit_layer, num_layers, steps, latency_ms, unsolved, policy,
                      len(window_layers), window_layers, span.text, source, tokens, confidence)
    return Answer(span.text, span.char_start, span.char_end, score, False, exit_layer, num_layers, steps, latency_ms,
                  unsolved, policy, len(window_layers), window_layers, span.text, source, tokens, confidence)
