"""Span decoding: start/end logits of every window of one question -> one answer.

Plain numpy, no tokenizer and no engine, as in Hugging Face's QA
post-processing: the null (no-answer) score is read from CLS before CLS is
masked out; the best span is searched among the ``n_best`` start and end
candidates of the context tokens, at most ``max_answer_length`` tokens long;
the answer text is cut from the original context by character offsets.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

Offset = Optional[Tuple[int, int]]


@dataclass(frozen=True)
class Span:
    start: int  # token index in its window
    end: int  # token index, inclusive
    score: float  # start_logit + end_logit


@dataclass(frozen=True)
class SpanAnswer:
    """The decoded answer of one question (over all its windows)."""

    text: str  # the best span's text, kept even when the verdict is no-answer ("" if no span exists)
    char_start: int  # of the best span; -1 if no span exists
    char_end: int  # exclusive; -1 if no span exists
    span_score: float  # best span's start+end logit (-inf when no span is possible)
    null_score: float  # smallest CLS start+end logit over the windows
    window: int  # window index of the best span (-1 if none)
    no_answer: bool  # the verdict: null_score_diff above the threshold, or no span at all

    @property
    def null_score_diff(self) -> float:
        """null_score - span_score: above the threshold means "no answer" (HF's score_diff)."""
        return self.null_score - self.span_score

    @property
    def prediction(self) -> str:
        """The official-format prediction: the text, or "" for no answer."""
        return "" if self.no_answer else self.text


def decode_spans(start: np.ndarray, end: np.ndarray, mask: np.ndarray, top_k: int = 20,
                 max_answer_len: int = 30) -> List[Span]:
    """Best spans of one window.

    Args:
        start, end: (T,) logits.
        mask: (T,) bool, True where a token may be part of an answer (context tokens).
        top_k: candidates kept for the start and for the end (n_best).
        max_answer_len: longest span in tokens.

    Returns:
        Up to ``top_k`` spans, best first.
    """
    start = np.asarray(start, dtype=np.float32)
    end = np.asarray(end, dtype=np.float32)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    k = min(top_k, idx.size)
    s_idx = idx[np.argsort(-start[idx], kind="stable")[:k]]  # (k,)
    e_idx = idx[np.argsort(-end[idx], kind="stable")[:k]]  # (k,)
    scores = start[s_idx][:, None] + end[e_idx][None, :]  # (k, k)
    length = e_idx[None, :] - s_idx[:, None] + 1
    valid = (length >= 1) & (length <= max_answer_len)
    flat = np.flatnonzero(valid.ravel())
    if flat.size == 0:
        return []
    order = flat[np.argsort(-scores.ravel()[flat], kind="stable")][:top_k]
    rows, cols = np.unravel_index(order, scores.shape)
    return [Span(int(s_idx[r]), int(e_idx[c]), float(scores[r, c])) for r, c in zip(rows, cols)]


def decode_answer(context: str, starts: Sequence[np.ndarray], ends: Sequence[np.ndarray],
                  offsets: Sequence[Sequence[Offset]], null_threshold: float = 0.0, top_k: int = 20,
                  max_answer_len: int = 30) -> SpanAnswer:
    """Answer of one question from the logits of all its windows.

    Args:
        context: the original passage.
        starts, ends: per window, (T_w,) logits (padding may follow; it is never a context token).
        offsets: per window, the (char_start, char_end) of each context token, None elsewhere.
        null_threshold: predict no answer when ``null_score - span_score > null_threshold``.

    Returns:
        The best span over all windows, or the no-answer verdict.
    """
    best: Optional[Tuple[Span, int]] = None
    null = float("inf")
    for w, (s, e, offs) in enumerate(zip(starts, ends, offsets)):
        s = np.asarray(s, dtype=np.float32)
        e = np.asarray(e, dtype=np.float32)
        null = min(null, float(s[0] + e[0]))  # CLS, read before it is masked out
        mask = np.zeros(s.shape[0], dtype=bool)
        mask[: len(offs)] = [o is not None for o in offs]
        spans = decode_spans(s, e, mask, top_k, max_answer_len)
        if spans and (best is None or spans[0].score > best[0].score):
            best = (spans[0], w)
    if best is None:
        return SpanAnswer("", -1, -1, float("-inf"), null, -1, True)
    span, w = best
    char_start = offsets[w][span.start][0]
    char_end = offsets[w][span.end][1]
    no_answer = null - span.score > null_threshold
    return SpanAnswer(context[char_start:char_end], char_start, char_end, span.score, null, w, no_answer)
