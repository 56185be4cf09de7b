"""The policy sweep on a compact record of every exit: simulated exits, F1, and simulated latency.

The model runs once per question with every exit head (``Runtime.record_exits``, one question at a time),
and each window's logits are reduced at once to what the sweep's policies and the span decoding read,
per exit layer (``ExitRecorder.add``); the logits themselves are dropped. Per window and layer:

    stats   (L, 3) float64  entropy of start, of end, smaller max probability  (entropy, maxprob)
    div     (V, L-1) float64  adjacent-layer divergence per similarity variant  (similarity)
    answer  (L, 2) int32    PABEE's decoded token span, (0, 0) for no answer     (patience)
    span    (L,) float32    best span score (start + end logit; -inf: none)      (decoding)
    null    (L,) float32    CLS score                                           (decoding)
    chars   (L, 2) int32    the best span's characters in the context            (prediction text)
    f1, em  (L,) float64    official F1 / EM of that span against the gold       (metrics)
    tokens  (L,) int32      tokens the layer ran (fewer after a skim stage)      (token-layers)

so a question costs a few hundred bytes per window, whatever its window length (the 13.5 GB of the
old runner was ONNX Runtime's per-session arenas grown by batch-32 recording, plus the logits kept).
This is exact: ``decode_answer`` takes the best span over the windows (the first on ties) against the
smallest CLS score, and each window's best span at its exit layer is what is stored; the policies'
comparisons use the policies' own statistics functions (tests check every sweep policy against
``Runtime.ask``).

Skimming changes the hidden states of the layers after a skim stage, so it cannot be simulated on a
full-depth record: a record is made *with* skim stages (``record_exits(..., skim="skim:2,0.001")``, the runtime
running ``none+skim:2,0.001``), and any exit policy simulated on it is that policy with those stages (an exit
decision never changes which tokens a row keeps). Per layer, the statistics range over the tokens the layer
ran (a dropped token's logits are -inf), as the runtime's decisions do.

Latency of a simulated setting is *simulated*: per question, the non-layer time and the per-layer step
times of the timed every-exit chain (same question, same run), summed up to the simulated exit layer.
"""

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elma.bench.results import QuestionResult, SweepPoint, na_prob, pareto_front
from elma.data.squad import Example
from elma.metrics.squad_v2 import compute_exact, compute_f1, normalize_answer
from elma.runtime.policies import (
    SIMILARITY_VARIANTS,
    EntropyPolicy,
    ExitPolicy,
    MaxProbPolicy,
    NoExitPolicy,
    PatiencePolicy,
    SimilarityPolicy,
    StaticPolicy,
    decoded_answer,
)
from elma.runtime.spans import decode_spans
from elma.runtime.stats import entropy, max_prob

logger = logging.getLogger(__name__)

SWEEP_POLICIES = ("entropy", "maxprob", "patience", "similarity", "static")
GRID_QUANTILES = 12  # thresholds per axis, at quantiles of what the recorded questions show (as elma calibrate)
TOP_K = 20  # span candidates, as the runtime (elma.runtime.engine.TOP_K)
MAX_ANSWER_TOKENS = 30  # as the runtime
PATIENCE_ANSWER_TOKENS = 30  # PatiencePolicy's default max_answer_len


def _scores(answers: Sequence[str], prediction: str) -> Tuple[float, float]:
    """Official (EM, F1) of one prediction, as ``elma.metrics.squad_v2`` scores it (0..1)."""
    golds = [a for a in answers if normalize_answer(a)] or [""]
    return float(max(compute_exact(g, prediction) for g in golds)), float(max(compute_f1(g, prediction) for g in golds))


@dataclass
class ExitRecord:
    """What the sweep keeps of every exit of every window (see the module docstring); windows concatenated."""

    num_layers: int
    null_thresholds: Tuple[float, ...]  # per exit; () means 0
    first_window: np.ndarray  # (Q,) int64 index of each question's first window
    stats: np.ndarray  # (W, L, 3) float64
    div: np.ndarray  # (W, V, L-1) float64
    answer: np.ndarray  # (W, L, 2) int32
    span: np.ndarray  # (W, L) float32
    null: np.ndarray  # (W, L) float32
    chars: np.ndarray  # (W, L, 2) int32
    f1: np.ndarray  # (W, L) float64
    em: np.ndarray  # (W, L) float64
    na_f1: np.ndarray  # (Q,) float64: F1 of "no answer"
    na_em: np.ndarray  # (Q,) float64
    has_answer: np.ndarray  # (Q,) bool
    tokens: Optional[np.ndarray] = None  # (W, L) int32: tokens each layer ran in each window
    skim: str = ""  # the skim stages the record was made with ("skim:2,0.001"; "" none): part of every simulated spec

    @property
    def questions(self) -> int:
        return int(self.first_window.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the record's arrays."""
        arrays = (self.first_window, self.stats, self.div, self.answer, self.span, self.null, self.chars, self.f1,
                  self.em, self.na_f1, self.na_em, self.has_answer, self.tokens)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def _threshold(self, layers: np.ndarray) -> np.ndarray:
        if not self.null_thresholds:
            return np.zeros(layers.shape, dtype=np.float64)
        return np.asarray(self.null_thresholds, dtype=np.float64)[layers - 1]


class ExitRecorder:
    """Reduces each question's recorded logits as it comes (``add``), then ``finish`` stacks the arrays."""

    def __init__(self, num_layers: int, null_thresholds: Sequence[float] = (), skim: str = ""):
        self.num_layers = num_layers
        self.null_thresholds = tuple(float(t) for t in null_thresholds)
        self.skim = skim
        self._windows: List[Tuple[np.ndarray, ...]] = []
        self._questions: List[Tuple[int, float, float, bool]] = []

    def add(self, example: Example, windows: Sequence[Tuple[Sequence, np.ndarray]]) -> None:
        """One question: per window, (token offsets, (L, 2, T_w) logits of every exit; -inf where skimming dropped
        the token before that layer)."""
        L = self.num_layers
        first = len(self._windows)
        cache: Dict[Tuple[int, int], Tuple[float, float]] = {}
        for offsets, logits in windows:
            if logits.shape[0] != L:
                raise ValueError(f"expected logits of {L} exits (got {logits.shape})")
            all_ctx = np.array([o is not None for o in offsets], dtype=bool)  # context tokens: the spans' range
            all_amask = all_ctx.copy()
            all_amask[0] = True  # the exit distributions range over CLS and the context
            live = np.isfinite(np.asarray(logits[:, 0, :len(offsets)], dtype=np.float32))  # (L, T) tokens each layer ran
            tokens = live.sum(axis=1).astype(np.int32)
            stats = np.empty((L, 3), dtype=np.float64)
            answer = np.zeros((L, 2), dtype=np.int32)
            span = np.full(L, -np.inf, dtype=np.float32)
            null = np.empty(L, dtype=np.float32)
            chars = np.full((L, 2), -1, dtype=np.int32)
            f1 = np.zeros(L, dtype=np.float64)
            em = np.zeros(L, dtype=np.float64)
            for layer in range(L):
                ctx, amask = all_ctx & live[layer], all_amask & live[layer]  # as the runtime's live mask
                s = np.asarray(logits[layer, 0, :len(offsets)], dtype=np.float32)
                e = np.asarray(logits[layer, 1, :len(offsets)], dtype=np.float32)
                stats[layer] = (float(entropy(s, amask)), float(entropy(e, amask)),
                                min(float(max_prob(s, amask)), float(max_prob(e, amask))))
                answer[layer] = decoded_answer(s, e, amask, PATIENCE_ANSWER_TOKENS)
                null[layer] = s[0] + e[0]
                spans = decode_spans(s, e, ctx, TOP_K, MAX_ANSWER_TOKENS)
                if spans:
                    best = spans[0]
                    span[layer] = best.score
                    key = (offsets[best.start][0], offsets[best.end][1])
                    chars[layer] = key
                    if key not in cache:
                        cache[key] = _scores(example.answer_texts, example.context[key[0]:key[1]])
                    em[layer], f1[layer] = cache[key]
            div = np.zeros((len(SIMILARITY_VARIANTS), max(L - 1, 0)), dtype=np.float64)
            for v, variant in enumerate(SIMILARITY_VARIANTS):
                probe = SimilarityPolicy(variant, 0.0)
                for layer in range(1, L):
                    div[v, layer - 1] = probe.divergence(
                        (logits[layer - 1, 0, :len(offsets)], logits[layer - 1, 1, :len(offsets)]),
                        (logits[layer, 0, :len(offsets)], logits[layer, 1, :len(offsets)]),
                        all_amask & live[layer])  # the deciding layer's mask, as the runtime passes it
            self._windows.append((stats, div, answer, span, null, chars, f1, em, tokens))
        if len(self._windows) == first:
            raise ValueError(f"question {example.qid}: no windows")
        na_em, na_f1 = _scores(example.answer_texts, "")
        self._questions.append((first, na_f1, na_em, bool(example.answer_texts)))

    def finish(self) -> ExitRecord:
        if not self._questions:
            raise ValueError("no questions recorded")
        cols = [np.stack(c) for c in zip(*self._windows)]
        q = list(zip(*self._questions))
        record = ExitRecord(self.num_layers, self.null_thresholds, np.asarray(q[0], dtype=np.int64),
                            *cols[:-1], np.asarray(q[1], dtype=np.float64), np.asarray(q[2], dtype=np.float64),
                            np.asarray(q[3], dtype=bool), tokens=cols[-1], skim=self.skim)
        self._windows, self._questions = [], []
        return record


def record_exits(rt, examples: Sequence[Example], on_question: Optional[Callable[[int], None]] = None,
                 skim: str = "") -> ExitRecord:
    """Run ``rt`` over ``examples`` once with every exit head, one question at a time, reducing as it goes.

    ``skim``: skim stages to run with (``"skim:2,0.001"``, several joined by ``+``; "" none), see the module
    docstring.

    One question at a time on purpose: ONNX Runtime grows each session's memory arena to the largest batch it
    has seen and keeps it; batches of 32 questions held 8.7 GB after 96 dev questions on MiniLM-L6 (13 sessions),
    one question at a time 0.44 GB.
    """
    policy = None
    if skim:
        policy = rt.resolve_policy(f"none+{skim}")
        skim = "+".join(s.spec for s in policy.skim_stages)  # normalised
    recorder = ExitRecorder(rt.num_layers, rt.info.null_thresholds, skim)
    for i, ex in enumerate(examples):
        (windows,) = rt.record_exits([(ex.question, ex.context)], skim=policy)
        recorder.add(ex, [(w.offsets, logits) for w, logits in windows])
        if on_question is not None:
            on_question(i)
    return recorder.finish()


# ---- simulation ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Simulated:
    """One policy setting on the record: per question."""

    spec: str
    exit_layer: np.ndarray  # (Q,) int64: the deepest window's exit
    window_layer: np.ndarray  # (W,) int64: each window's exit
    unsolved: np.ndarray  # (Q,) bool
    f1: np.ndarray  # (Q,) float64, 0..1
    em: np.ndarray  # (Q,) float64
    best_window: np.ndarray  # (Q,) int64: window of the best span (-1: none)
    no_answer: np.ndarray  # (Q,) bool
    span_minus_null: np.ndarray  # (Q,) float64 (-inf: no span)

    @property
    def mean_layers(self) -> float:
        return float(self.exit_layer.mean())


def _first_true(ok: np.ndarray, L: int, offset: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """(exit layer, confident) per row of a (W, K) condition: first True at column i means layer i + offset."""
    hit = ok.any(axis=1)
    return np.where(hit, ok.argmax(axis=1) + offset, L), hit


def _runs(cond: np.ndarray, patience: int, L: int) -> Tuple[np.ndarray, np.ndarray]:
    """Counting policies: a counter grows while ``cond[:, i]`` (between layers i+1 and i+2) holds, resets
    otherwise; exit at the first layer where it reaches ``patience`` (as their ``decide``)."""
    count = np.zeros(cond.shape[0], dtype=np.int64)
    reached = np.zeros(cond.shape, dtype=bool)
    for i in range(cond.shape[1]):
        count = np.where(cond[:, i], count + 1, 0)
        reached[:, i] = count >= patience
    return _first_true(reached, L, offset=2)


def _exit_policy(record: ExitRecord, policy: ExitPolicy) -> ExitPolicy:
    """The exit policy of ``policy`` when its skim stages are the record's (a policy without any: the record's)."""
    stages = "+".join(s.spec for s in policy.skim_stages)
    if stages and stages != record.skim:
        raise ValueError(f"{policy.spec}: its skim stages are not the record's ({record.skim or 'no skimming'}); "
                         f"record with skim={stages!r}")
    return policy.exit_policy


def spec_on(record: ExitRecord, policy: ExitPolicy) -> str:
    """The spec of ``policy`` run with the record's skim stages (what the runtime would be asked to run)."""
    base = _exit_policy(record, policy).spec
    return f"{base}+{record.skim}" if record.skim else base


def window_exits(record: ExitRecord, policy: ExitPolicy) -> Tuple[np.ndarray, np.ndarray]:
    """Per window: (exit layer, confident), as the runtime's loop decides them."""
    L, W = record.num_layers, record.stats.shape[0]
    policy = _exit_policy(record, policy)
    if isinstance(policy, EntropyPolicy):
        return _first_true((record.stats[:, :, 0] < policy.start_threshold) & (record.stats[:, :, 1] < policy.end_threshold), L)
    if isinstance(policy, MaxProbPolicy):
        return _first_true(record.stats[:, :, 2] >= policy.threshold, L)
    if isinstance(policy, StaticPolicy):
        if policy.layer > L:
            raise ValueError(f"static exit layer {policy.layer} is beyond the model's {L} layers")
        return np.full(W, policy.layer, dtype=np.int64), np.ones(W, dtype=bool)
    if isinstance(policy, NoExitPolicy):
        return np.full(W, L, dtype=np.int64), np.zeros(W, dtype=bool)
    if isinstance(policy, PatiencePolicy):
        if policy.max_answer_len != PATIENCE_ANSWER_TOKENS:
            raise ValueError(f"the record holds decoded answers of at most {PATIENCE_ANSWER_TOKENS} tokens")
        return _runs(np.all(record.answer[:, 1:] == record.answer[:, :-1], axis=2), policy.patience, L)
    if isinstance(policy, SimilarityPolicy):
        v = SIMILARITY_VARIANTS.index(policy.variant)
        return _runs(record.div[:, v, :] < policy.threshold, policy.patience, L)
    raise ValueError(f"the sweep cannot simulate policy {policy.spec!r} (simulated: {', '.join(SWEEP_POLICIES)}, none)")


def token_layers(record: ExitRecord, window_layer: np.ndarray) -> np.ndarray:
    """(Q,) tokens times layers each question runs (over its windows, each up to its own exit), as
    ``Answer.token_layers`` counts them, from (W,) window exit layers."""
    if record.tokens is None:
        raise ValueError("the record has no token counts")
    cum = np.cumsum(record.tokens.astype(np.int64), axis=1)  # (W, L)
    per_window = cum[np.arange(cum.shape[0]), np.asarray(window_layer, dtype=np.int64) - 1]
    return np.add.reduceat(per_window, record.first_window)


def simulate(record: ExitRecord, policy: ExitPolicy) -> Simulated:
    """Exits, answers and scores of ``policy`` on every recorded question (vectorised over windows); on a record
    made with skim stages, ``policy`` runs with them (its spec says so)."""
    spec = spec_on(record, policy)
    policy = _exit_policy(record, policy)
    layer_w, confident_w = window_exits(record, policy)
    starts = record.first_window
    rows = np.arange(layer_w.shape[0])
    score = record.span[rows, layer_w - 1].astype(np.float64)  # (W,)
    null = record.null[rows, layer_w - 1].astype(np.float64)
    exit_layer = np.maximum.reduceat(layer_w, starts)  # (Q,)
    best = np.maximum.reduceat(score, starts)
    question_of = np.repeat(np.arange(starts.shape[0]), np.diff(np.append(starts, layer_w.shape[0])))
    first_best = np.minimum.reduceat(np.where(score == best[question_of], rows, rows.shape[0]), starts)  # ties: first
    null_q = np.minimum.reduceat(null, starts)
    has_span = np.isfinite(best)
    diff = np.where(has_span, best - null_q, -np.inf)
    no_answer = ~has_span | (null_q - np.where(has_span, best, 0.0) > record._threshold(exit_layer))
    pick = np.where(has_span, first_best, 0)
    f1 = np.where(no_answer, record.na_f1, record.f1[pick, layer_w[pick] - 1])
    em = np.where(no_answer, record.na_em, record.em[pick, layer_w[pick] - 1])
    unsolved = np.zeros(starts.shape[0], dtype=bool) if isinstance(policy, NoExitPolicy) else \
        np.minimum.reduceat(confident_w.astype(np.int8), starts) == 0
    return Simulated(spec, exit_layer, layer_w, unsolved, f1, em, np.where(has_span, first_best, -1), no_answer, diff)


def question_results(record: ExitRecord, sim: Simulated, examples: Sequence[Example],
                     latency_ms: Sequence[float], flops: Sequence[float]) -> List[QuestionResult]:
    """Per question results of a simulated setting (prediction text, no-answer probability, exits)."""
    out = []
    starts = np.append(record.first_window, sim.window_layer.shape[0])
    thresholds = record._threshold(sim.exit_layer)
    tl = token_layers(record, sim.window_layer) if record.tokens is not None else np.zeros(len(examples), dtype=np.int64)
    for qi, ex in enumerate(examples):
        w = int(sim.best_window[qi])
        text = ""
        if not sim.no_answer[qi]:
            lo, hi = record.chars[w, sim.window_layer[w] - 1]
            text = ex.context[lo:hi]
        layers = tuple(int(x) for x in sim.window_layer[starts[qi]:starts[qi + 1]])
        out.append(QuestionResult(ex.qid, text, na_prob(float(sim.span_minus_null[qi]), float(thresholds[qi])),
                                  int(sim.exit_layer[qi]), layers, float(latency_ms[qi]), unsolved=bool(sim.unsolved[qi]),
                                  flops=float(flops[qi]), token_layers=int(tl[qi])))
    return out


# ---- the grid and the sweep -----------------------------------------------------------------------------------


def grid(record: ExitRecord, name: str, quantiles: int = GRID_QUANTILES) -> List[ExitPolicy]:
    """Candidate settings of policy ``name``: thresholds at quantiles of the statistic it compares (the rule of
    ``elma.runtime.calibrate.Recorded.grid``)."""
    q = np.linspace(0.0, 1.0, quantiles)
    L = record.num_layers
    flat = record.stats.reshape(-1, 3)
    if name == "entropy":
        starts = sorted(set(np.round(np.quantile(flat[:, 0], q) * 1.0001 + 1e-6, 6)))
        ends = sorted(set(np.round(np.quantile(flat[:, 1], q) * 1.0001 + 1e-6, 6)))
        return [EntropyPolicy(0.0, 0.0)] + [EntropyPolicy(float(s), float(e)) for s in starts for e in ends]
    if name == "maxprob":
        values = sorted(set(float(v) for v in np.clip(np.round(np.quantile(flat[:, 2], q), 6), 1e-6, 1.0)))
        return [MaxProbPolicy(v) for v in values]
    if name == "patience":
        return [PatiencePolicy(k) for k in range(1, L)] or [PatiencePolicy(1)]
    if name == "similarity":
        out: List[ExitPolicy] = []
        for v, variant in enumerate(SIMILARITY_VARIANTS):
            div = record.div[:, v, :].ravel()
            if div.size == 0:
                continue
            values = sorted(set(float(x) for x in np.round(np.quantile(div, q[1:]) * 1.0001 + 1e-9, 9)))
            out += [SimilarityPolicy(variant, x, k) for x in values for k in (1, 2) if k < L]
        return out
    if name == "static":
        return [StaticPolicy(k) for k in range(1, L + 1)]
    raise ValueError(f"no sweep grid for policy {name!r}; choose from {', '.join(SWEEP_POLICIES)}")


@dataclass(frozen=True)
class SweepSetting:
    """One simulated setting, before its latency is known (the exits are kept compactly for that)."""

    policy: str
    spec: str
    f1: float  # percent
    exact: float
    mean_layers: float
    unsolved_rate: float
    exit_layer: np.ndarray  # (Q,) int8
    mean_token_layers: float = 0.0  # per question (0: the record has no token counts)
    skim: str = ""  # the record's skim stages ("" none)


def simulate_grid(record: ExitRecord, on_policy: Optional[Callable[[str], None]] = None) -> List[SweepSetting]:
    """Every setting of every sweep policy, simulated; on a record made with skim stages, each with those stages
    (one plot line per policy and skim setting: ``entropy+skim:2,0.001``)."""
    out = []
    for name in SWEEP_POLICIES:
        label = f"{name}+{record.skim}" if record.skim else name
        if on_policy is not None:
            on_policy(label)
        for policy in grid(record, name):
            sim = simulate(record, policy)
            tl = float(token_layers(record, sim.window_layer).mean()) if record.tokens is not None else 0.0
            out.append(SweepSetting(label, sim.spec, 100 * float(sim.f1.mean()), 100 * float(sim.em.mean()),
                                    sim.mean_layers, float(sim.unsolved.mean()), sim.exit_layer.astype(np.int8), tl,
                                    record.skim))
    return out


def token_fraction(record: ExitRecord, full: ExitRecord) -> np.ndarray:
    """(Q, L) per question and layer: tokens the skimmed record's layer ran over the full record's, its windows
    together: what scales the every-exit chain's step times into a skimmed setting's simulated latency."""
    if record.tokens is None or full.tokens is None:
        raise ValueError("the records have no token counts")
    kept = np.add.reduceat(record.tokens.astype(np.float64), record.first_window, axis=0)
    return kept / np.add.reduceat(full.tokens.astype(np.float64), full.first_window, axis=0)


def simulated_latency_ms(exit_layer: np.ndarray, other_ms: np.ndarray, layer_ms: np.ndarray) -> np.ndarray:
    """Per question: non-layer time plus the step times up to the exit layer.

    Args:
        exit_layer: (Q,) 1-based.
        other_ms: (Q,) tokenisation, embeddings and decoding of the timed every-exit chain.
        layer_ms: (Q, L) its step times (layer, exit head and decision).
    """
    cum = np.cumsum(layer_ms, axis=1)  # (Q, L)
    return other_ms + cum[np.arange(cum.shape[0]), np.asarray(exit_layer, dtype=np.int64) - 1]


def front_specs(settings: Sequence[SweepSetting]) -> List[str]:
    """One spec per distinct (mean layers, token-layers, F1) on the F1-vs-mean-layers front, and with skimmed
    settings on the F1-vs-token-layers front (what ``--measure-front`` times)."""
    flags = pareto_front([(s.mean_layers, s.f1) for s in settings])
    skimmed = any(s.skim for s in settings)
    if skimmed:
        flags = [a or b for a, b in zip(flags, pareto_front([(s.mean_token_layers, s.f1) for s in settings]))]
    seen, out = set(), []
    for s, on in zip(settings, flags):
        key = (s.mean_layers, s.mean_token_layers, s.f1) if skimmed else (s.mean_layers, s.f1)
        if on and key not in seen:
            seen.add(key)
            out.append(s.spec)
    return out


def sweep_points(settings: Sequence[SweepSetting], other_ms: np.ndarray, layer_ms: np.ndarray,
                 measured: Optional[Dict[str, Tuple[float, float]]] = None,
                 fractions: Optional[Dict[str, np.ndarray]] = None) -> List[SweepPoint]:
    """Sweep points with simulated latency and the fronts; ``measured``: spec -> (mean ms, F1) of timed rows (a
    front point with the same mean layers, token-layers and F1 as a timed one shares its figures).

    ``fractions``: skim stages -> (Q, L) ``token_fraction``; a skimmed setting's step times are the chain's scaled
    by the tokens each layer ran (an estimate: linear in tokens; ``--measure-front`` times the front for real).
    """
    skimmed = any(s.skim for s in settings)

    def key(s: SweepSetting) -> tuple:
        return (s.mean_layers, s.mean_token_layers, s.f1) if skimmed else (s.mean_layers, s.f1)

    by_key = {key(s): measured[s.spec] for s in settings if s.spec in (measured or {})}
    ms = [float(simulated_latency_ms(s.exit_layer, other_ms, layer_ms * (fractions or {}).get(s.skim, 1.0)).mean())
          for s in settings]
    front_layers = pareto_front([(s.mean_layers, s.f1) for s in settings])
    front_latency = pareto_front([(m, s.f1) for s, m in zip(settings, ms)])
    front_tokens = pareto_front([(s.mean_token_layers, s.f1) for s in settings])
    out = []
    for s, m, fl, ft, fk in zip(settings, ms, front_layers, front_latency, front_tokens):
        timed = by_key.get(key(s)) if (fl or fk) else None  # equivalent settings share the timed one
        out.append(SweepPoint(s.policy, s.spec, s.f1, s.exact, s.mean_layers, m, s.unsolved_rate, fl, ft,
                              None if timed is None else timed[0], None if timed is None else timed[1],
                              s.mean_token_layers, fk, s.skim))
    return out
