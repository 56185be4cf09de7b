"""Answer SQuAD examples at every exit with a PyTorch multi-exit model (the reference path).

One forward pass yields the logits of every exit, so all exits are scored at
once; ``calibrate_null_thresholds`` then picks each exit's no-answer threshold
with the official ``best_f1`` search on held-out data.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from elma.data.features import Window, WindowConfig, build_windows
from elma.data.squad import Example
from elma.metrics.answerability import null_auc, span_f1
from elma.metrics.squad_v2 import squad_v2_scores
from elma.model.multi_exit import MultiExitQA
from elma.runtime.spans import SpanAnswer, decode_answer
from elma.tokenization import pad_token_id
from elma.train.batching import collate

logger = logging.getLogger(__name__)


@dataclass
class ExitResult:
    """Answers of one exit for every example, plus the official scores."""

    exit_layer: int  # 1-based
    answers: List[SpanAnswer]
    null_threshold: float

    def predictions(self, examples: Sequence[Example]) -> Dict[str, str]:
        return {ex.qid: a.prediction for ex, a in zip(examples, self.answers)}

    def spans(self, examples: Sequence[Example]) -> Dict[str, str]:
        """The best span of every example, verdict ignored ("" only where no span exists)."""
        return {ex.qid: a.text for ex, a in zip(examples, self.answers)}

    def null_score_diffs(self, examples: Sequence[Example]) -> Dict[str, float]:
        return {ex.qid: a.null_score_diff for ex, a in zip(examples, self.answers)}

    def na_probs(self, examples: Sequence[Example]) -> Dict[str, float]:
        """sigmoid(null_score_diff - threshold): above 0.5 exactly when the verdict is no-answer.

        A probability (never above 1) so that the official script's default
        ``--na-prob-thresh 1.0`` leaves the predictions as they are.
        """
        return {ex.qid: _sigmoid(a.null_score_diff - self.null_threshold) for ex, a in zip(examples, self.answers)}


def _sigmoid(x: float) -> float:
    if x != x:  # NaN cannot happen with finite logits; keep the file valid anyway
        return 0.5
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@torch.no_grad()
def exit_logits(model: MultiExitQA, windows: Sequence[Window], pad_id: int, batch_size: int = 64,
                progress: bool = False) -> List[np.ndarray]:
    """Logits of every window at every exit: one (L, 2, T_w) float32 array per window."""
    model.eval()
    device = next(model.parameters()).device  # a model trained on a GPU is scored there
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    out: List[Optional[np.ndarray]] = [None] * len(windows)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="predict", unit="batch", mininterval=5)
    for idx in batches:
        batch = {k: v.to(device) for k, v in collate([windows[i] for i in idx], pad_id).items()}
        start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (L, B, T)
        both = torch.stack([start, end], dim=1).float().cpu().numpy()  # (L, 2, B, T)
        for j, i in enumerate(idx):
            out[i] = both[:, :, j, : len(windows[i])]
    return out  # type: ignore[return-value]


def predict_all_exits(model: MultiExitQA, tokenizer, examples: Sequence[Example], batch_size: int = 64,
                      n_best: int = 20, max_answer_len: int = 30, progress: bool = False) -> List[ExitResult]:
    """Decode the answer of every example at every exit, with the model's stored thresholds."""
    cfg = model.exit_config
    wcfg = WindowConfig(cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length)
    windows = build_windows(examples, tokenizer, wcfg, with_labels=False)
    logits = exit_logits(model, windows, pad_token_id(tokenizer), batch_size, progress)
    per_example: List[List[int]] = [[] for _ in examples]
    for w_idx, w in enumerate(windows):
        per_example[w.example_index].append(w_idx)
    thresholds = cfg.null_thresholds or (0.0,) * model.num_exits
    results = []
    for layer in range(model.num_exits):
        answers = []
        for ex, w_ids in zip(examples, per_example):
            answers.append(decode_answer(
                ex.context,
                [logits[i][layer, 0] for i in w_ids],
                [logits[i][layer, 1] for i in w_ids],
                [windows[i].offsets for i in w_ids],
                null_threshold=thresholds[layer], top_k=n_best, max_answer_len=max_answer_len,
            ))
        results.append(ExitResult(layer + 1, answers, thresholds[layer]))
    return results


def gold_map(examples: Sequence[Example]) -> Dict[str, List[str]]:
    return {ex.qid: ex.answer_texts for ex in examples}


def calibrate_null_thresholds(results: Sequence[ExitResult], examples: Sequence[Example]) -> List[float]:
    """Each exit's threshold on null_score_diff that maximises F1 (the official best_f1 search)."""
    gold = gold_map(examples)
    abstain_f1 = 100.0 * sum(1 for ex in examples if not ex.answer_texts) / max(1, len(examples))
    thresholds = []
    for res in results:
        diffs = {qid: _finite(d) for qid, d in res.null_score_diffs(examples).items()}
        scores = squad_v2_scores(gold, res.spans(examples), na_probs=diffs)
        t = float(scores["best_f1_thresh"])
        if diffs and scores["best_f1"] <= abstain_f1 + 1e-9:
            # The official search reports threshold 0.0 when answering nothing is best; 0.0 would answer every
            # question whose difference is below it, so take one below every difference: "no answer" everywhere.
            t = min(diffs.values()) - 1.0
        thresholds.append(t)
    return thresholds


def with_null_thresholds(results: Sequence[ExitResult], thresholds: Sequence[float]) -> List[ExitResult]:
    """The same exits with each verdict taken again at its exit's threshold (no span at all stays no-answer)."""
    return [ExitResult(res.exit_layer, [replace(a, no_answer=a.window < 0 or a.null_score_diff > t) for a in res.answers],
                       float(t)) for res, t in zip(results, thresholds)]


def _finite(x: float) -> float:
    return 1e9 if x == float("inf") else x


def score_exits(results: Sequence[ExitResult], examples: Sequence[Example]) -> List[dict]:
    """Official scores of every exit (with its threshold applied), as plain dicts for JSON.

    Each row also splits the score into its parts (``elma.metrics.answerability``):
    ``HasAns_span_f1`` (extraction, verdict ignored) and ``null_auc`` (answerability).
    """
    gold = gold_map(examples)
    rows = []
    for res in results:
        scores = squad_v2_scores(gold, res.predictions(examples))
        rows.append({"exit_layer": res.exit_layer, "null_threshold": res.null_threshold, **scores,
                     "HasAns_span_f1": span_f1(res.spans(examples), gold),
                     "null_auc": null_auc(res.null_score_diffs(examples), gold)})
    return rows
