"""Skimming: which tokens of a row the layers after a skim stage still run on.

After layer k of a ``skim:k,THRESHOLD`` stage, the exit head's start and end
logits already rate every token as an answer boundary. A context token whose
start and end probability are both under the threshold (softmax over the row's
answer positions, CLS and context, in float32 through log-sum-exp as in
``elma.runtime.stats``) is dropped; CLS, the question and the separators are
always kept, and so are ``margin`` tokens on each side of the best ``spans``
candidate spans, so that the answer's neighbourhood keeps its context. The
following layers run on the shorter rows: BERT and ALBERT add position
embeddings once, at the embeddings, so a token keeps its position whatever is
dropped around it (the idea of PoWER-BERT, LTP, Length-Adaptive Transformer).

Pure numpy: the runtime (``elma.runtime.engine``) calls ``keep_positions`` per
row and gathers the kept tokens with the backend's ``select_tokens``, whose
index ``gather_index`` builds; ``copy_runs`` turns one row of it into the few
contiguous copies a GPU backend makes.
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from elma.runtime.spans import decode_spans
from elma.runtime.stats import log_softmax

MARGIN = 2  # tokens kept on each side of each protected candidate span
SPANS = 5  # best candidate spans protected (with their margins) whatever their probabilities
MAX_ANSWER_TOKENS = 30  # longest candidate span, as in the runtime's span decoding


@dataclass(frozen=True)
class SkimStage:
    """Drop ruled-out context tokens after ``layer``; written ``skim:LAYER,THRESHOLD[,MARGIN[,SPANS]]``."""

    layer: int  # 1-based; the layers after it run on the kept tokens
    threshold: float  # probability; a context token goes when its start and end probability are both under it (0: none)
    margin: int = MARGIN  # tokens kept on each side of each protected span
    spans: int = SPANS  # best candidate spans protected

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError(f"skim layer must be >= 1 (got {self.layer})")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"skim threshold must be a probability in [0, 1] (got {self.threshold:g})")
        if self.margin < 0 or self.spans < 1:
            raise ValueError(f"skim needs margin >= 0 and spans >= 1 (got {self.margin}, {self.spans})")

    @property
    def spec(self) -> str:
        tail = "" if (self.margin, self.spans) == (MARGIN, SPANS) else f",{self.margin},{self.spans}"
        return f"skim:{self.layer},{self.threshold:g}{tail}"


def keep_positions(start: np.ndarray, end: np.ndarray, answer_mask: np.ndarray, context: np.ndarray,
                   threshold: float, margin: int = MARGIN, spans: int = SPANS,
                   max_answer_len: int = MAX_ANSWER_TOKENS) -> np.ndarray:
    """The positions of one row that the next layers keep.

    Args:
        start, end: (T,) logits of the row's tokens (any float dtype; cast to float32).
        answer_mask: (T,) bool, the positions the start/end distributions range over (CLS and context).
        context: (T,) bool, the context tokens: the only ones that may be dropped (CLS, question and
            separators are not context and always stay).
        threshold: drop a context token when its start and its end probability are both under this.
        margin: tokens kept on each side of each of the ``spans`` best candidate spans.
        max_answer_len: longest candidate span in tokens.

    Returns:
        Sorted int64 positions into the row, (T',) with T' <= T; every position when ``threshold`` is 0.
    """
    start = np.asarray(start, dtype=np.float32)
    end = np.asarray(end, dtype=np.float32)
    context = np.asarray(context, dtype=bool)
    answer_mask = np.asarray(answer_mask, dtype=bool)
    assert start.shape == end.shape == context.shape == answer_mask.shape, (start.shape, end.shape, context.shape)
    p_start, p_end = np.exp(log_softmax(np.stack([start, end]), answer_mask))  # (2, T), 0 outside the mask
    keep = ~context | (p_start >= threshold) | (p_end >= threshold)  # strict "under": threshold 0 keeps all
    if not keep.all():
        t = start.shape[0]
        for span in decode_spans(start, end, context, top_k=max(spans, 20), max_answer_len=max_answer_len)[:spans]:
            keep[max(0, span.start - margin): min(t, span.end + margin + 1)] = True
    return np.flatnonzero(keep)


def gather_index(kept: Sequence[np.ndarray], width: int) -> np.ndarray:
    """(B, width) gather index of the re-padded rows: row j holds ``kept[j]`` then padding.

    A padding slot p (p >= len(kept[j])) reads source position ``p - len(kept[j])``: real, finite
    hidden states (masked out by the attention mask, but never uninitialised memory, whose NaNs a
    masked softmax would still multiply by 0), and one contiguous run for ``copy_runs``.
    """
    index = np.empty((len(kept), width), dtype=np.int64)
    for j, k in enumerate(kept):
        n = len(k)
        assert n <= width, f"row {j} keeps {n} tokens, more than the width {width}"
        index[j, :n] = k
        index[j, n:] = np.arange(width - n)
    return index


def copy_runs(index_row: np.ndarray) -> List[Tuple[int, int, int]]:
    """(destination, source, length) of the contiguous runs of one gather-index row, in order."""
    index_row = np.asarray(index_row, dtype=np.int64)
    if index_row.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index_row) != 1) + 1  # where a new run starts
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [index_row.size]))
    return [(int(a), int(index_row[a]), int(b - a)) for a, b in zip(starts, ends)]
