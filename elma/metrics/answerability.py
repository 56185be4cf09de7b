"""Two numbers that split a SQuAD 2.0 score into its parts.

A SQuAD 2.0 F1 mixes two skills: finding the span when there is one, and
telling answerable from unanswerable questions. The official metric gives only
the mix at one threshold (and ``best_f1`` at the best one). To see which skill
limits a model:

* ``span_f1``: F1 of the best span on the answerable questions, as if the model
  never said "no answer" (its extraction skill);
* ``null_auc``: area under the ROC curve of the null-score difference as a
  detector of unanswerable questions (its answerability skill, threshold-free:
  50 is chance, 100 perfect).
"""

from typing import Dict, List, Optional

import numpy as np

from elma.metrics.squad_v2 import compute_f1


def null_auc(null_score_diff: Dict[str, float], gold: Dict[str, List[str]]) -> Optional[float]:
    """ROC AUC (percent) of ``null_score_diff`` (higher = more likely unanswerable); ties count half.

    None when the questions scored are all answerable or all unanswerable.
    ``inf`` (no span possible) ranks above every finite difference.
    """
    qids = [q for q in gold if q in null_score_diff]
    scores = np.array([null_score_diff[q] for q in qids], dtype=np.float64)
    unanswerable = np.array([not gold[q] for q in qids])
    n_pos, n_neg = int(unanswerable.sum()), int((~unanswerable).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(scores)
    u = ranks[unanswerable].sum() - n_pos * (n_pos + 1) / 2.0  # Mann-Whitney U of the unanswerable side
    return float(100.0 * u / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing their mean rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last copy of each distinct value
    return ((last - counts + 1 + last) / 2.0)[inverse]


def span_f1(spans: Dict[str, str], gold: Dict[str, List[str]]) -> Optional[float]:
    """Mean best-over-gold F1 (percent) of ``spans`` on the answerable questions; None if there are none."""
    scores = [max(compute_f1(g, spans.get(q, "")) for g in answers) for q, answers in gold.items() if answers]
    return float(100.0 * np.mean(scores)) if scores else None
