"""Numerically stable statistics of start/end logits, in float32 numpy.

Engine outputs may be float16, whose ``exp`` overflows above ~11; everything
here casts to float32 first and works through log-sum-exp. Masked positions
(question tokens, padding) get probability 0 but CLS stays (the no-answer
choice is part of the distribution the model is unsure about).
"""

from typing import Optional

import numpy as np


def log_softmax(logits: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """log p over the last axis; masked-out positions get -inf.

    Args:
        logits: (..., T) any float dtype.
        mask: (..., T) bool, True where a position is allowed; None allows all.
    """
    x = np.asarray(logits, dtype=np.float32)
    if mask is not None:
        x = np.where(mask, x, -np.inf)
    top = np.max(x, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    shifted = x - top
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def entropy(logits: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Shannon entropy (nats) over the last axis: (..., T) -> (...)."""
    logp = log_softmax(logits, mask)
    p = np.exp(logp)
    return -np.sum(p * np.where(p > 0, logp, 0.0), axis=-1)  # 0 * log 0 = 0, not nan


def max_prob(logits: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Largest probability over the last axis: (..., T) -> (...)."""
    return np.exp(np.max(log_softmax(logits, mask), axis=-1))


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """KL(p || q) in nats over the last axis, both given as logits: (..., T) -> (...)."""
    logp = log_softmax(p_logits, mask)
    logq = log_softmax(q_logits, mask)
    p = np.exp(logp)
    live = p > 0  # masked or underflowed positions add nothing (0 * log 0 = 0)
    terms = p * (np.where(live, logp, 0.0) - np.where(live, logq, 0.0))
    return np.maximum(np.sum(terms, axis=-1), 0.0)
