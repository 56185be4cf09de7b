"""Sliding windows over long contexts, with QA labels and character offsets.

The recipe is the usual one of Hugging Face's ``run_qa.py``: ``[CLS] question
[SEP] context-window [SEP]``, consecutive windows overlap by ``doc_stride``
tokens, an answer that lies wholly inside a window is labelled with its token
span, and a window without the answer (or an unanswerable question) is labelled
with the CLS position (index 0) for both start and end.

Works on any ``tokenizers.Tokenizer`` (WordPiece for BERT/MiniLM, the
SentencePiece-derived one for ALBERT): no torch, no transformers.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from elma.data.squad import Example

Offset = Optional[Tuple[int, int]]  # (char_start, char_end) for context tokens, None otherwise


@dataclass(frozen=True)
class WindowConfig:
    max_seq_length: int = 384  # tokens per window, specials included
    doc_stride: int = 128  # tokens shared by consecutive windows (HF's ``stride``)
    max_query_length: int = 64  # longer questions are cut to this many tokens

    def __post_init__(self) -> None:
        room = self.max_seq_length - self.max_query_length - 4
        if self.max_query_length < 1 or room < 1:
            raise ValueError(f"max_seq_length {self.max_seq_length} leaves no room for context after a "
                             f"{self.max_query_length}-token question")
        if not 0 <= self.doc_stride < room:
            raise ValueError(f"doc_stride must be in [0, {room}) for max_seq_length {self.max_seq_length} and "
                             f"max_query_length {self.max_query_length} (got {self.doc_stride})")


@dataclass
class Window:
    """One model input: a question with one window of its context."""

    example_index: int  # index into the example list the windows were built from
    input_ids: List[int]
    token_type_ids: List[int]
    offsets: List[Offset]  # per token; None outside the context
    start_position: int = 0  # label: token index of the answer start, 0 (CLS) for no answer
    end_position: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


def build_windows(
    examples: Sequence[Example],
    tokenizer,
    config: WindowConfig = WindowConfig(),
    with_labels: bool = True,
    batch_size: int = 1024,
) -> List[Window]:
    """Tokenise every example into one or more windows.

    Args:
        examples: validated SQuAD examples.
        tokenizer: a ``tokenizers.Tokenizer`` with a pair post-processor (CLS/SEP).
        config: window geometry.
        with_labels: compute start/end labels from the first answer.
        batch_size: examples per call into the (parallel) Rust tokenizer.

    Returns:
        Windows in example order; every example yields at least one.
    """
    truncation, padding = tokenizer.truncation, tokenizer.padding
    tokenizer.no_padding()
    windows: List[Window] = []
    try:
        for lo in range(0, len(examples), batch_size):
            chunk = examples[lo:lo + batch_size]
            tokenizer.no_truncation()  # "only_second" truncation fails on a lone question longer than max_seq_length
            questions = [ex.question for ex in chunk]
            cut = [_cut(q, enc, config.max_query_length)
                   for q, enc in zip(questions, tokenizer.encode_batch(questions, add_special_tokens=False))]
            tokenizer.enable_truncation(config.max_seq_length, stride=config.doc_stride, strategy="only_second")
            for i, enc in enumerate(tokenizer.encode_batch([(q, ex.context) for q, ex in zip(cut, chunk)])):
                ex_index = lo + i
                for part in [enc] + list(enc.overflowing):
                    windows.append(_window(ex_index, part, examples[ex_index] if with_labels else None))
    finally:  # leave the caller's tokenizer as it was
        _restore(tokenizer, truncation, padding)
    return windows


def _cut(question: str, enc, max_query_length: int) -> str:
    """The question cut after its ``max_query_length``-th token."""
    if len(enc.ids) <= max_query_length:
        return question
    return question[: enc.offsets[max_query_length - 1][1]]


def _restore(tokenizer, truncation: Optional[dict], padding: Optional[dict]) -> None:
    if truncation is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(**truncation)
    if padding is None:
        tokenizer.no_padding()
    else:
        padding = dict(padding)
        padding["direction"] = padding.get("direction", "right")
        tokenizer.enable_padding(**padding)


def _window(ex_index: int, enc, example: Optional[Example]) -> Window:
    seq_ids = enc.sequence_ids
    offsets: List[Offset] = [tuple(o) if s == 1 else None for o, s in zip(enc.offsets, seq_ids)]
    win = Window(ex_index, list(enc.ids), list(enc.type_ids), offsets)
    if example is not None and example.answers:
        ans = example.answers[0]
        span = char_span_to_tokens(offsets, ans.answer_start, ans.answer_start + len(ans.text))
        if span is not None:
            win.start_position, win.end_position = span
    return win


def char_span_to_tokens(offsets: Sequence[Offset], char_start: int, char_end: int) -> Optional[Tuple[int, int]]:
    """Token span that covers characters [char_start, char_end), or None if the window does not hold it all."""
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > char_start or offsets[ctx[-1]][1] < char_end:
        return None
    start = next(i for i in ctx if offsets[i][1] > char_start)
    end = next(i for i in reversed(ctx) if offsets[i][0] < char_end)
    if end < start:
        return None
    return start, end
