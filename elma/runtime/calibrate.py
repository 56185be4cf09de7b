"""What ``elma calibrate`` records: one compact record of every exit per skim setting, and the outcomes on it.

The model runs over the calibration questions once per skim setting: once at full depth without skimming, and
once per setting of the skim grid (``skim:LAYER,THRESHOLD``, the runtime running ``none+skim:LAYER,THRESHOLD``),
because skimming changes the hidden states of every layer after its stage and cannot be simulated from a
recording without it. Each pass is reduced at once to ``elma-bench``'s compact record (``elma.bench.sweep``:
a few hundred bytes per window, one question at a time), on which every exit-policy setting is simulated
exactly as the runtime runs it, skim stages included (``elma.bench.sweep.simulate``; the tests check it against
``Runtime.ask``). ``elma.runtime.certify`` builds Learn then Test on these records.

The consistency risk compares an answer with the full-depth answer *without skimming*: ``against_reference``
turns a record's per-exit F1 against the gold answers into F1 against those reference answers, so that the
same simulation gives the agreement.

The calibration file must come from training material, never from the dev set the model is judged on.
"""

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from elma.bench import sweep as sw
from elma.data.squad import Example
from elma.errors import DataError
from elma.metrics.squad_v2 import compute_exact, compute_f1, normalize_answer
from elma.runtime.policies import NoExitPolicy
from elma.runtime.skim import SkimStage

logger = logging.getLogger(__name__)

CALIBRATED_POLICIES = sw.SWEEP_POLICIES
NO_SKIM = ""  # the key of the record made without skimming


def skim_grid(layers: Sequence[int], thresholds: Sequence[float], num_layers: Optional[int] = None) -> List[str]:
    """The skim settings ``skim:LAYER,THRESHOLD`` of every layer and threshold (one recording pass each).

    Raises:
        ValueError: a layer or threshold a skim stage cannot take, a layer that leaves no layer after it, or only
            one of the two lists.
    """
    layers, thresholds = list(layers), list(thresholds)
    if bool(layers) != bool(thresholds):
        raise ValueError("a skim grid needs both --skim-layers and --skim-thresholds")
    out = []
    for layer in layers:
        if num_layers is not None and not 1 <= layer < num_layers:
            raise ValueError(f"--skim-layers: {layer} is not a layer with layers after it (the model has {num_layers})")
        for threshold in thresholds:
            if not 0.0 < threshold < 1.0:
                raise ValueError(f"--skim-thresholds: {threshold:g} is not a probability in (0, 1)")
            out.append(SkimStage(int(layer), float(threshold)).spec)
    return list(dict.fromkeys(out))


@dataclass
class Recordings:
    """The calibration set recorded once per skim setting."""

    examples: List[Example]
    records: Dict[str, sw.ExitRecord]  # skim spec ("" first: no skimming) -> its compact record
    record_s: float  # wall time of the recording passes

    @property
    def full(self) -> sw.ExitRecord:
        return self.records[NO_SKIM]

    @property
    def num_layers(self) -> int:
        return self.full.num_layers

    @property
    def num_windows(self) -> int:
        return int(self.full.stats.shape[0])


def record_all(runtime, examples: Sequence[Example], skims: Sequence[str] = (),
               on_pass: Optional[Callable[[int, int, str], None]] = None) -> Recordings:
    """Run ``runtime`` over ``examples`` once without skimming and once per skim setting in ``skims``.

    Args:
        runtime: an ``elma.runtime.engine.Runtime`` (any backend).
        skims: skim settings (``"skim:2,0.001"``, stages joined by ``+``).
        on_pass: called with (pass number from 1, passes, skim spec) before each pass.
    """
    if not examples:
        raise DataError("the calibration file has no questions")
    keys = [NO_SKIM] + [s for s in dict.fromkeys(skims) if s]
    records: Dict[str, sw.ExitRecord] = {}
    t0 = time.perf_counter()
    for i, skim in enumerate(keys):
        if on_pass is not None:
            on_pass(i + 1, len(keys), skim)
        record = sw.record_exits(runtime, examples, skim=skim)
        records[record.skim] = record
    return Recordings(list(examples), records, time.perf_counter() - t0)


def subset(record: sw.ExitRecord, questions: np.ndarray) -> sw.ExitRecord:
    """The record of questions ``questions`` alone (sorted indices), e.g. a calibration split's learn part."""
    questions = np.asarray(questions, dtype=np.int64)
    counts = np.diff(np.append(record.first_window, record.stats.shape[0]))  # windows per question
    windows = np.concatenate([np.arange(record.first_window[q], record.first_window[q] + counts[q])
                              for q in questions.tolist()]) if questions.size else np.zeros(0, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts[questions])[:-1]]).astype(np.int64) if questions.size else \
        np.zeros(0, dtype=np.int64)
    per_window = {k: getattr(record, k)[windows] for k in ("stats", "div", "answer", "span", "null", "chars", "f1", "em")}
    per_question = {k: getattr(record, k)[questions] for k in ("na_f1", "na_em", "has_answer")}
    tokens = None if record.tokens is None else record.tokens[windows]
    return replace(record, first_window=first, tokens=tokens, **per_window, **per_question)


def predictions(record: sw.ExitRecord, sim: sw.Simulated, examples: Sequence[Example]) -> List[str]:
    """Per question, the answer text of a simulated setting ("" for no answer)."""
    out = []
    for qi, ex in enumerate(examples):
        if sim.no_answer[qi]:
            out.append("")
            continue
        w = int(sim.best_window[qi])
        lo, hi = record.chars[w, sim.window_layer[w] - 1]
        out.append(ex.context[lo:hi])
    return out


def full_depth_answers(recordings: Recordings) -> List[str]:
    """Per question, the answer at full depth without skimming."""
    full = recordings.full
    return predictions(full, sw.simulate(full, NoExitPolicy()), recordings.examples)


def against_reference(record: sw.ExitRecord, examples: Sequence[Example], references: Sequence[str]) -> sw.ExitRecord:
    """The record with each exit's F1 / EM taken against ``references`` (one answer per question, "" for no
    answer) instead of the gold answers: simulating a setting on it gives each question's agreement with its
    reference (two empty answers agree), the consistency risk's F1."""
    f1 = np.zeros_like(record.f1)
    em = np.zeros_like(record.em)
    na_f1 = np.zeros_like(record.na_f1)
    na_em = np.zeros_like(record.na_em)
    bounds = np.append(record.first_window, record.stats.shape[0])
    for qi, (ex, ref) in enumerate(zip(examples, references)):
        gold = ref if normalize_answer(ref) else ""
        scores: Dict[tuple, tuple] = {}
        for w in range(int(bounds[qi]), int(bounds[qi + 1])):
            for layer in range(record.num_layers):
                key = tuple(record.chars[w, layer].tolist())
                if key[0] < 0:
                    continue  # no span: never read (the question answers "no answer" there)
                if key not in scores:
                    text = ex.context[key[0]:key[1]]
                    scores[key] = (float(compute_f1(gold, text)), float(compute_exact(gold, text)))
                f1[w, layer], em[w, layer] = scores[key]
        na_f1[qi] = na_em[qi] = float(not gold)
    return replace(record, f1=f1, em=em, na_f1=na_f1, na_em=na_em)
