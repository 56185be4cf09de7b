"""Recording every exit's logits once, and simulating exit policies on them exactly as the runtime runs them.

The model runs once per question: every layer, every exit's logits kept
(``Runtime.record_exits``). Any policy setting is then simulated offline on
those logits, exactly as the runtime's loop would run it (per window, policy
state threaded, the question decoded across its windows with each window's
exit-layer logits and the null threshold of its deepest exit). ``elma
calibrate`` (``elma.runtime.certify``) and ``elma-bench --sweep`` build on this.

What the policies compare (entropies, maximum probabilities, adjacent-layer
divergences, decoded spans) is computed once per window and layer with the
policies' own functions and kept as (windows, layers) arrays; a setting then
costs array comparisons only (tests check this equals calling ``decide`` layer
by layer, and equals running the runtime). Per question, the answer's F1
against the gold answers and against the full-depth answer is computed once
per exit layer (per tuple of window exit layers for multi-window questions)
and kept in (questions, layers) arrays, so that a setting's per-question
losses are a gather.

The calibration file must come from training material, never from the dev set
the model is judged on.
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elma.data.squad import Example
from elma.errors import DataError
from elma.metrics.squad_v2 import question_f1, squad_v2_scores
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
from elma.runtime.spans import decode_answer
from elma.runtime.stats import entropy, kl_divergence, max_prob

logger = logging.getLogger(__name__)

CALIBRATED_POLICIES = ("entropy", "maxprob", "patience", "similarity", "static")
GRID_QUANTILES = 12  # thresholds per axis, taken at quantiles of what the calibration set shows


@dataclass(frozen=True)
class PolicyScore:
    """One simulated setting."""

    spec: str
    f1: float  # official SQuAD 2.0 F1, percent
    exact: float
    mean_layers: float  # mean exit layer over the questions (a question costs its deepest window)
    unsolved_rate: float  # share of questions with a window that reached the last layer unconfident


@dataclass
class _Question:
    example: Example
    offsets: List[list]  # per window
    logits: List[np.ndarray]  # per window, (L, 2, T_w)
    answer_masks: List[np.ndarray]  # per window, (T_w,) bool: CLS and context tokens


class Recorded:
    """Every exit's logits of a calibration set, and the simulation of policies on them."""

    def __init__(self, questions: List[_Question], num_layers: int, null_thresholds: Sequence[float]):
        self.questions = questions
        self.num_layers = num_layers
        self.null_thresholds = tuple(null_thresholds)
        self.gold = {q.example.qid: q.example.answer_texts for q in questions}
        counts = np.array([len(q.logits) for q in questions], dtype=np.int64)  # windows per question
        self._first_window = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # (N,)
        self._window_question = np.repeat(np.arange(len(questions)), counts)  # (W,)
        self._multi = np.flatnonzero(counts > 1)  # questions read through several windows
        self._predictions: Dict[Tuple[int, Tuple[int, ...]], str] = {}  # (question, window exit layers) -> text
        self._stat_cache: Optional[np.ndarray] = None
        self._div_cache: Dict[str, np.ndarray] = {}
        self._same_answer_cache: Dict[int, np.ndarray] = {}
        self._outcome_cache: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._multi_outcomes: Dict[Tuple[int, Tuple[int, ...]], Tuple[float, float]] = {}
        self._full_answers: Optional[List[str]] = None

    @property
    def num_windows(self) -> int:
        return int(self._window_question.size)

    def _null(self, layer: int) -> float:
        return self.null_thresholds[layer - 1] if self.null_thresholds else 0.0

    def _decode(self, qi: int, layers: Tuple[int, ...]) -> str:
        q = self.questions[qi]
        starts = [lg[layer - 1, 0] for lg, layer in zip(q.logits, layers)]
        ends = [lg[layer - 1, 1] for lg, layer in zip(q.logits, layers)]
        return decode_answer(q.example.context, starts, ends, q.offsets, self._null(max(layers))).prediction

    def prediction(self, qi: int, layers: Tuple[int, ...]) -> str:
        """The answer text of question ``qi`` when its windows exit at ``layers`` (cached)."""
        key = (qi, layers)
        if key not in self._predictions:
            self._predictions[key] = self._decode(qi, layers)
        return self._predictions[key]

    def _stats(self) -> np.ndarray:
        """(W, L, 3) float64 over every window: H_start, H_end and the smaller max probability per layer, computed
        once with the functions the policies use (over a window's L layers at once; the statistics reduce over the
        last axis only, so that each row is what the policy computes), so that threshold policies are simulated by
        comparisons alone."""
        if self._stat_cache is None:
            out = np.empty((self.num_windows, self.num_layers, 3), dtype=np.float64)
            w = 0
            for q in self.questions:
                for lg, m in zip(q.logits, q.answer_masks):
                    out[w, :, 0] = entropy(lg[:, 0], m)
                    out[w, :, 1] = entropy(lg[:, 1], m)
                    out[w, :, 2] = np.minimum(max_prob(lg[:, 0], m).astype(np.float64),
                                              max_prob(lg[:, 1], m).astype(np.float64))
                    w += 1
            self._stat_cache = out
        return self._stat_cache

    def _divergences(self, variant: str) -> np.ndarray:
        """(W, L - 1) divergence between layers l and l+1 of every window.

        ``SimilarityPolicy.divergence`` over a window's layers at once: the same float32 KL per row, then the
        same float64 sums (forward + reverse per distribution, the two distributions averaged).
        """
        if variant not in self._div_cache:
            out = np.empty((self.num_windows, self.num_layers - 1), dtype=np.float64)
            w = 0
            for q in self.questions:
                for lg, m in zip(q.logits, q.answer_masks):
                    total = np.zeros(self.num_layers - 1, dtype=np.float64)
                    for d in (0, 1):  # start, end
                        prev, cur = lg[:-1, d], lg[1:, d]  # (L - 1, T) each
                        forward = (kl_divergence(cur, prev, m).astype(np.float64) if variant in ("kl", "bikl")
                                   else 0.0)
                        reverse = (kl_divergence(prev, cur, m).astype(np.float64) if variant in ("rekl", "bikl")
                                   else 0.0)
                        total = total + (forward + reverse)
                    out[w] = total / 2
                    w += 1
            self._div_cache[variant] = out
        return self._div_cache[variant]

    def _same_answer(self, max_answer_len: int) -> np.ndarray:
        """(W, L - 1) bool: PABEE's decoded answer is the same at layers l and l+1."""
        if max_answer_len not in self._same_answer_cache:
            spans = np.array([[decoded_answer(lg[layer, 0], lg[layer, 1], m, max_answer_len)
                               for layer in range(self.num_layers)]
                              for q in self.questions for lg, m in zip(q.logits, q.answer_masks)],
                             dtype=np.int64).reshape(self.num_windows, self.num_layers, 2)
            self._same_answer_cache[max_answer_len] = np.all(spans[:, 1:] == spans[:, :-1], axis=-1)
        return self._same_answer_cache[max_answer_len]

    # ---- exits -------------------------------------------------------------------------------------------------

    def exit_layers(self, policy: ExitPolicy) -> Tuple[np.ndarray, np.ndarray]:
        """(W,) exit layer (1-based) and (W,) confident flag of every window, as the runtime's loop decides them.

        A window that no layer satisfies runs to the last layer, unconfident.
        """
        L = self.num_layers
        if isinstance(policy, (EntropyPolicy, MaxProbPolicy)):
            st = self._stats()
            if isinstance(policy, EntropyPolicy):
                ok = (st[:, :, 0] < policy.start_threshold) & (st[:, :, 1] < policy.end_threshold)  # (W, L)
            else:
                ok = st[:, :, 2] >= policy.threshold
            return self._first_hit(ok, offset=1)
        if isinstance(policy, (SimilarityPolicy, PatiencePolicy)):
            # Same rule as their ``decide``: a counter grows while the condition holds between consecutive
            # layers and resets otherwise; exit when it reaches the patience. holds[:, i]: layers i+1 and i+2.
            if isinstance(policy, SimilarityPolicy):
                holds = self._divergences(policy.variant) < policy.threshold
            else:
                holds = self._same_answer(policy.max_answer_len)
            count = np.zeros(self.num_windows, dtype=np.int64)
            reached = np.zeros(holds.shape, dtype=bool)  # (W, L - 1)
            for i in range(holds.shape[1]):
                count = np.where(holds[:, i], count + 1, 0)
                reached[:, i] = count >= policy.patience
            return self._first_hit(reached, offset=2)
        layers = np.full(self.num_windows, L, dtype=np.int64)
        confident = np.zeros(self.num_windows, dtype=bool)
        w = 0
        for q in self.questions:
            for logits, amask in zip(q.logits, q.answer_masks):
                state = None
                for layer in range(1, L + 1):
                    d = policy.decide(layer, logits[layer - 1, 0], logits[layer - 1, 1], amask, state)
                    state = d.state
                    if d.exit:
                        layers[w], confident[w] = layer, True
                        break
                w += 1
        return layers, confident

    def _first_hit(self, ok: np.ndarray, offset: int) -> Tuple[np.ndarray, np.ndarray]:
        """From (W, K) bool, the layer of each window's first True (column + ``offset``), else the last layer."""
        if ok.shape[1] == 0:
            return np.full(ok.shape[0], self.num_layers, dtype=np.int64), np.zeros(ok.shape[0], dtype=bool)
        hit = ok.any(axis=1)
        layers = np.where(hit, ok.argmax(axis=1) + offset, self.num_layers).astype(np.int64)
        return layers, hit

    def window_exits(self, policy: ExitPolicy) -> List[List[Tuple[int, bool]]]:
        """Per question, per window: (exit layer, confident), as the runtime's loop decides them."""
        layers, confident = self.exit_layers(policy)
        pairs = list(zip(layers.tolist(), confident.tolist()))
        return [pairs[lo:lo + len(q.logits)] for lo, q in zip(self._first_window.tolist(), self.questions)]

    def question_layers(self, window_layers: np.ndarray) -> np.ndarray:
        """(N,) layers each question costs (its deepest window) from (W,) window exit layers."""
        return np.maximum.reduceat(window_layers, self._first_window)

    def score(self, spec: str, exits: List[List[Tuple[int, bool]]], count_unsolved: bool = True) -> PolicyScore:
        preds = {}
        layers_sum, unsolved = 0, 0
        for qi, (q, per_window) in enumerate(zip(self.questions, exits)):
            layers = tuple(layer for layer, _ in per_window)
            preds[q.example.qid] = self.prediction(qi, layers)
            layers_sum += max(layers)
            unsolved += count_unsolved and not all(ok for _, ok in per_window)
        scores = squad_v2_scores(self.gold, preds)
        n = len(self.questions)
        return PolicyScore(spec, float(scores["f1"]), float(scores["exact"]), layers_sum / n, unsolved / n)

    def simulate(self, policy: ExitPolicy) -> PolicyScore:
        return self.score(policy.spec, self.window_exits(policy), not isinstance(policy, NoExitPolicy))

    # ---- per-question outcomes (what risks are computed from) ---------------------------------------------------

    def full_depth_answers(self) -> List[str]:
        """Per question, the answer at full depth."""
        if self._full_answers is None:
            self._full_answers = [self._decode(qi, (self.num_layers,) * len(q.logits))
                                  for qi, q in enumerate(self.questions)]
        return self._full_answers

    def outcomes(self, window_layers: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Per question, for windows exiting at ``window_layers`` (W,): the answer's official F1 against the gold
        answers and its F1 against the full-depth answer, (N,) float64 each, on the 0-1 scale.

        The F1 against the full-depth answer counts a no-answer verdict as the empty answer (both empty: 1).
        Unlabelled questions (no gold answer, not marked impossible) get NaN for the first.
        """
        N, L = len(self.questions), self.num_layers
        if self._outcome_cache is None:
            self._outcome_cache = (np.full((N, L), np.nan), np.full((N, L), np.nan))  # for one-window questions
        gold_f1, full_f1 = self._outcome_cache
        first_layer = window_layers[self._first_window]  # (N,) the only window's layer, where there is one
        rows = np.arange(N)
        todo = np.isnan(full_f1[rows, first_layer - 1])
        todo[self._multi] = False
        for qi in np.flatnonzero(todo).tolist():
            layer = int(first_layer[qi])
            gold_f1[qi, layer - 1], full_f1[qi, layer - 1] = self._question_outcome(qi, (layer,))
        out_gold = gold_f1[rows, first_layer - 1]
        out_full = full_f1[rows, first_layer - 1]
        for qi in self._multi.tolist():
            lo = int(self._first_window[qi])
            key = (qi, tuple(window_layers[lo:lo + len(self.questions[qi].logits)].tolist()))
            if key not in self._multi_outcomes:
                self._multi_outcomes[key] = self._question_outcome(*key)
            out_gold[qi], out_full[qi] = self._multi_outcomes[key]
        return out_gold, out_full

    def _question_outcome(self, qi: int, layers: Tuple[int, ...]) -> Tuple[float, float]:
        ex = self.questions[qi].example
        text = self._decode(qi, layers)
        labelled = ex.is_impossible or bool(ex.answers)
        gold = question_f1(ex.answer_texts, text) if labelled else float("nan")
        return gold, question_f1([self.full_depth_answers()[qi]], text)

    # ---- what the grid is built from ----------------------------------------------------------------------------

    def grid(self, name: str, quantiles: int = GRID_QUANTILES, questions: Optional[np.ndarray] = None) -> List[ExitPolicy]:
        """Candidate settings of policy ``name``: thresholds at quantiles of the statistic it compares.

        Args:
            questions: indices of the questions whose statistics set the thresholds (default: all); calibration
                builds the grid on its learn part only, so that the part it tests on plays no role in the grid.
        """
        q = np.linspace(0.0, 1.0, quantiles)
        L = self.num_layers
        windows = None if questions is None else np.isin(self._window_question, np.asarray(questions))
        if name in ("entropy", "maxprob"):
            st = self._stats() if windows is None else self._stats()[windows]
            st = st.reshape(-1, 3)  # (W * L, 3)
            if st.shape[0] == 0:
                raise ValueError("no questions to build the calibration grid from")
            if name == "entropy":
                starts = sorted(set(np.round(np.quantile(st[:, 0], q) * 1.0001 + 1e-6, 6)))
                ends = sorted(set(np.round(np.quantile(st[:, 1], q) * 1.0001 + 1e-6, 6)))
                return [EntropyPolicy(0.0, 0.0)] + [EntropyPolicy(float(s), float(e)) for s in starts for e in ends]
            values = sorted(set(float(v) for v in np.clip(np.round(np.quantile(st[:, 2], q), 6), 1e-6, 1.0)))
            return [MaxProbPolicy(v) for v in values]
        if name == "patience":
            return [PatiencePolicy(k) for k in range(1, L)] or [PatiencePolicy(1)]
        if name == "similarity":
            out: List[ExitPolicy] = []
            for variant in SIMILARITY_VARIANTS:
                div = self._divergences(variant) if windows is None else self._divergences(variant)[windows]
                if div.size == 0:
                    continue
                values = sorted(set(float(v) for v in np.round(np.quantile(div, q[1:]) * 1.0001 + 1e-9, 9)))
                out += [SimilarityPolicy(variant, v, k) for v in values for k in (1, 2) if k < L]
            return out
        if name == "static":
            return [StaticPolicy(k) for k in range(1, L + 1)]
        raise ValueError(f"no calibration grid for policy {name!r}; choose from {', '.join(CALIBRATED_POLICIES)}")


def record(runtime, examples: Sequence[Example], batch_size: int = 32) -> Recorded:
    """Run ``runtime`` once over ``examples`` (every layer), keeping every exit's logits."""
    if not examples:
        raise DataError("the calibration file has no questions")
    questions: List[_Question] = []
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo:lo + batch_size]
        for ex, windows in zip(chunk, runtime.record_exits([(ex.question, ex.context) for ex in chunk])):
            masks = [np.array([i == 0 or o is not None for i, o in enumerate(w.offsets)], dtype=bool) for w, _ in windows]
            questions.append(_Question(ex, [w.offsets for w, _ in windows], [lg for _, lg in windows], masks))
    return Recorded(questions, runtime.num_layers, runtime.info.null_thresholds)
