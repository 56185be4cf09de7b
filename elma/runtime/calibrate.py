"""``elma calibrate``: choose each exit policy's parameters on a calibration set, store them in the bundle.

The model runs once per question: every layer, every exit's logits kept
(``Runtime.record_exits``). Every policy and parameter of the grid is then
simulated offline on those logits, exactly as the runtime's loop would run it
(per window, policy state threaded, the question decoded across its windows
with each window's exit-layer logits and the null threshold of its deepest
exit). For each policy the setting with the fewest mean layers whose F1 is
within ``max_f1_drop`` points of full depth is kept; ties go to the higher F1.

What the policies compare (entropies, maximum probabilities, adjacent-layer
divergences, decoded spans) is computed once per window and layer with the
policies' own functions; a grid point then costs comparisons and counting
only (tests check this equals calling ``decide`` layer by layer, and equals
running the runtime). Decoded answers are cached per (question, window exit layers).

The calibration file must come from training material, never from the dev set
the model is judged on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elma.data.squad import Example
from elma.errors import DataError
from elma.metrics.squad_v2 import squad_v2_scores
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
from elma.runtime.stats import entropy, max_prob

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


@dataclass(frozen=True)
class CalibrationReport:
    full_depth: PolicyScore
    max_f1_drop: float
    chosen: Dict[str, PolicyScore]  # per policy name, the fastest setting within the F1 budget
    default: str  # spec the runtime uses when none is given
    questions: int
    grid_points: int
    record_s: float  # running the model once over the calibration set
    search_s: float  # simulating the grid

    def manifest_entry(self, data_name: str) -> Dict[str, object]:
        """The bundle manifest's ``exit_thresholds`` value."""
        return {"default": self.default, "max_f1_drop": self.max_f1_drop, "data": data_name, "questions": self.questions,
                "full_depth": asdict(self.full_depth), "policies": {k: asdict(v) for k, v in self.chosen.items()}}


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
        self._predictions: Dict[Tuple[int, Tuple[int, ...]], str] = {}  # (question, window exit layers) -> text
        self._stat_cache: Optional[List[List[np.ndarray]]] = None
        self._div_cache: Dict[str, List[List[np.ndarray]]] = {}
        self._answer_cache: Dict[int, List[List[List[Tuple[int, int]]]]] = {}

    def _null(self, layer: int) -> float:
        return self.null_thresholds[layer - 1] if self.null_thresholds else 0.0

    def prediction(self, qi: int, layers: Tuple[int, ...]) -> str:
        key = (qi, layers)
        if key not in self._predictions:
            q = self.questions[qi]
            starts = [lg[layer - 1, 0] for lg, layer in zip(q.logits, layers)]
            ends = [lg[layer - 1, 1] for lg, layer in zip(q.logits, layers)]
            span = decode_answer(q.example.context, starts, ends, q.offsets, self._null(max(layers)))
            self._predictions[key] = span.prediction
        return self._predictions[key]

    def _stats(self) -> List[List[np.ndarray]]:
        """Per question, per window: (L, 3) float64 of H_start, H_end and the smaller max probability, computed once
        with the functions the policies use, so that threshold policies are simulated by comparisons alone."""
        if self._stat_cache is None:
            self._stat_cache = [[np.array([[float(entropy(lg[layer, 0], m)), float(entropy(lg[layer, 1], m)),
                                            min(float(max_prob(lg[layer, 0], m)), float(max_prob(lg[layer, 1], m)))]
                                           for layer in range(self.num_layers)])
                                 for lg, m in zip(q.logits, q.answer_masks)] for q in self.questions]
        return self._stat_cache

    def _threshold_exits(self, policy: ExitPolicy) -> Optional[List[List[Tuple[int, bool]]]]:
        """Exits of the stateless threshold policies from the cached statistics (None for other policies)."""
        if isinstance(policy, EntropyPolicy):
            def ok(st):
                return (st[:, 0] < policy.start_threshold) & (st[:, 1] < policy.end_threshold)
        elif isinstance(policy, MaxProbPolicy):
            def ok(st):
                return st[:, 2] >= policy.threshold
        else:
            return None
        out = []
        for per_window in self._stats():
            exits = []
            for st in per_window:
                hits = np.flatnonzero(ok(st))
                exits.append((int(hits[0]) + 1, True) if hits.size else (self.num_layers, False))
            out.append(exits)
        return out

    def window_exits(self, policy: ExitPolicy) -> List[List[Tuple[int, bool]]]:
        """Per question, per window: (exit layer, confident), as the runtime's loop decides them."""
        fast = self._threshold_exits(policy)
        if fast is None:
            fast = self._counting_exits(policy)
        if fast is not None:
            return fast
        out = []
        for q in self.questions:
            per_window = []
            for logits, amask in zip(q.logits, q.answer_masks):
                state, exit_at = None, (self.num_layers, False)
                for layer in range(1, self.num_layers + 1):
                    d = policy.decide(layer, logits[layer - 1, 0], logits[layer - 1, 1], amask, state)
                    state = d.state
                    if d.exit:
                        exit_at = (layer, True)
                        break
                per_window.append(exit_at)
            out.append(per_window)
        return out

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

    # ---- what the grid is built from ----------------------------------------------------------------------------

    def grid(self, name: str, quantiles: int = GRID_QUANTILES) -> List[ExitPolicy]:
        """Candidate settings of policy ``name``: thresholds at quantiles of the statistic it compares."""
        q = np.linspace(0.0, 1.0, quantiles)
        L = self.num_layers
        if name == "entropy":
            stats = np.concatenate([st for per_window in self._stats() for st in per_window])  # (N * L, 3)
            h_start, h_end = stats[:, 0], stats[:, 1]
            starts = sorted(set(np.round(np.quantile(h_start, q) * 1.0001 + 1e-6, 6)))
            ends = sorted(set(np.round(np.quantile(h_end, q) * 1.0001 + 1e-6, 6)))
            return [EntropyPolicy(0.0, 0.0)] + [EntropyPolicy(float(s), float(e)) for s in starts for e in ends]
        if name == "maxprob":
            p = np.concatenate([st for per_window in self._stats() for st in per_window])[:, 2]
            values = sorted(set(float(v) for v in np.clip(np.round(np.quantile(p, q), 6), 1e-6, 1.0)))
            return [MaxProbPolicy(v) for v in values]
        if name == "patience":
            return [PatiencePolicy(k) for k in range(1, L)] or [PatiencePolicy(1)]
        if name == "similarity":
            out: List[ExitPolicy] = []
            for variant in SIMILARITY_VARIANTS:
                div = np.concatenate([d for per_window in self._divergences(variant) for d in per_window])
                if div.size == 0:
                    continue
                values = sorted(set(float(v) for v in np.round(np.quantile(div, q[1:]) * 1.0001 + 1e-9, 9)))
                out += [SimilarityPolicy(variant, v, k) for v in values for k in (1, 2) if k < L]
            return out
        if name == "static":
            return [StaticPolicy(k) for k in range(1, L + 1)]
        raise ValueError(f"no calibration grid for policy {name!r}; choose from {', '.join(CALIBRATED_POLICIES)}")

    def _divergences(self, variant: str) -> List[List[np.ndarray]]:
        """Per question, per window: (L - 1,) divergence between layers l and l+1, with the policy's own function."""
        if variant not in self._div_cache:
            probe = SimilarityPolicy(variant, 0.0)
            self._div_cache[variant] = [
                [np.array([probe.divergence((lg[layer - 1, 0], lg[layer - 1, 1]), (lg[layer, 0], lg[layer, 1]), m)
                           for layer in range(1, self.num_layers)], dtype=np.float64)
                 for lg, m in zip(q.logits, q.answer_masks)] for q in self.questions]
        return self._div_cache[variant]

    def _answers(self, max_answer_len: int) -> List[List[List[Tuple[int, int]]]]:
        """Per question, per window, per layer: the decoded answer span PABEE compares."""
        if max_answer_len not in self._answer_cache:
            self._answer_cache[max_answer_len] = [
                [[decoded_answer(lg[layer, 0], lg[layer, 1], m, max_answer_len) for layer in range(self.num_layers)]
                 for lg, m in zip(q.logits, q.answer_masks)] for q in self.questions]
        return self._answer_cache[max_answer_len]

    def _counting_exits(self, policy: ExitPolicy) -> Optional[List[List[Tuple[int, bool]]]]:
        """Exits of the counting policies (patience, similarity) from cached per-layer values (None for others).

        Same rule as their ``decide``: a counter grows while the condition holds between consecutive layers
        and resets otherwise; exit when it reaches the patience.
        """
        if isinstance(policy, SimilarityPolicy):
            holds = [[d < policy.threshold for d in per_window] for per_window in self._divergences(policy.variant)]
        elif isinstance(policy, PatiencePolicy):
            holds = [[[a[i] == a[i - 1] for i in range(1, len(a))] for a in per_window]
                     for per_window in self._answers(policy.max_answer_len)]
        else:
            return None
        out = []
        for per_window in holds:
            exits = []
            for cond in per_window:
                count, exit_at = 0, (self.num_layers, False)
                for i, ok in enumerate(cond):  # cond[i]: between layers i+1 and i+2
                    count = count + 1 if ok else 0
                    if count >= policy.patience:
                        exit_at = (i + 2, True)
                        break
                exits.append(exit_at)
            out.append(exits)
        return out

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


def search(recorded: Recorded, max_f1_drop: float, policies: Sequence[str] = CALIBRATED_POLICIES,
           default: Optional[str] = None) -> Tuple[PolicyScore, Dict[str, PolicyScore], str, int]:
    """(full depth, fastest setting per policy within the F1 budget, default spec, grid points simulated)."""
    if max_f1_drop < 0:
        raise ValueError(f"max_f1_drop must be >= 0 F1 points (got {max_f1_drop})")
    full = recorded.simulate(NoExitPolicy())
    floor = full.f1 - max_f1_drop - 1e-9
    chosen: Dict[str, PolicyScore] = {}
    points = 0
    for name in policies:
        best: Optional[PolicyScore] = None
        for policy in recorded.grid(name):
            points += 1
            s = recorded.simulate(policy)
            if s.f1 >= floor and (best is None or (s.mean_layers, -s.f1) < (best.mean_layers, -best.f1)):
                best = s
        if best is not None:
            chosen[name] = best
            logger.info("%s: %s  F1 %.2f (full %.2f)  mean layers %.2f", name, best.spec, best.f1, full.f1, best.mean_layers)
        else:
            logger.warning("%s: no setting keeps F1 within %.2f of full depth", name, max_f1_drop)
    if default is not None:
        if default not in chosen:
            raise ValueError(f"--default {default!r} was not calibrated (calibrated: {', '.join(chosen) or 'none'})")
        default_spec = chosen[default].spec
    elif chosen:
        default_spec = min(chosen.values(), key=lambda s: (s.mean_layers, -s.f1)).spec
    else:
        default_spec = "none"
    return full, chosen, default_spec, points


def calibrate(runtime, examples: Sequence[Example], max_f1_drop: float, policies: Sequence[str] = CALIBRATED_POLICIES,
              default: Optional[str] = None, batch_size: int = 32) -> CalibrationReport:
    """Record the calibration set once, then search every policy's grid offline.

    Args:
        runtime: an ``elma.runtime.engine.Runtime`` (any backend).
        examples: calibration questions with gold answers (from training material, not dev).
        max_f1_drop: F1 points (0-100 scale) a setting may lose against full depth.
        policies: names to calibrate (``CALIBRATED_POLICIES``).
        default: the policy name the runtime should use by default; None: the fastest chosen setting.
    """
    for name in policies:
        if name not in CALIBRATED_POLICIES:
            raise ValueError(f"cannot calibrate policy {name!r}; choose from {', '.join(CALIBRATED_POLICIES)}")
    t0 = time.perf_counter()
    recorded = record(runtime, examples, batch_size)
    t1 = time.perf_counter()
    full, chosen, default_spec, points = search(recorded, max_f1_drop, policies, default)
    t2 = time.perf_counter()
    return CalibrationReport(full, max_f1_drop, chosen, default_spec, len(examples), points, t1 - t0, t2 - t1)


def check_calibration_target(bundle_root, overwrite: bool) -> None:
    """Refuse (exit 2), before calibrating, to replace a calibration the bundle already holds unless ``overwrite``."""
    from pathlib import Path

    from elma.fsutil import refuse_unless_overwrite
    from elma.runtime.bundle import MANIFEST_NAME, read_manifest

    if read_manifest(bundle_root).get("exit_thresholds"):
        refuse_unless_overwrite(f"{Path(bundle_root) / MANIFEST_NAME} (a calibration, exit_thresholds)", "bundle",
                                overwrite, hint="add --dry-run to only report")


def write_calibration(bundle_root, report: CalibrationReport, data_name: str) -> None:
    """Store the chosen settings in the bundle manifest (``exit_thresholds``), atomically."""
    from elma.runtime.bundle import update_manifest

    update_manifest(bundle_root, {"exit_thresholds": report.manifest_entry(data_name)})
