"""Span decoding on hand-made logits: masks, lengths, ordering, the null score and
threshold, and answer text cut from the original context by character offsets."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elma.runtime.spans import Span, decode_answer, decode_spans

REPO = Path(__file__).resolve().parents[2]
NEG = -1e4

# window layout used below: [CLS] q q [SEP] c c c c c c [SEP] [PAD] [PAD]
#                            0     1 2 3     4 5 6 7 8 9 10    11    12
CONTEXT = "Rollo led the Norse raiders to Normandy"  # tokens 4..9: Rollo led the Norse raiders to
OFFSETS = [None, None, None, None, (0, 5), (6, 9), (10, 13), (14, 19), (20, 27), (28, 30), None]
MASK = np.array([o is not None for o in OFFSETS] + [False, False])
T = len(MASK)


def logits(values: dict, fill: float = 0.0, n: int = T) -> np.ndarray:
    out = np.full(n, fill, dtype=np.float32)
    for i, v in values.items():
        out[i] = v
    return out


def brute_force(start, end, mask, max_len):
    spans = [(float(start[i]) + float(end[j]), i, j) for i, j in itertools.product(range(len(mask)), repeat=2)
             if mask[i] and mask[j] and i <= j < i + max_len]
    return sorted(spans, key=lambda s: -s[0])


# --------------------------------------------------------------------------- #
# decode_spans
# --------------------------------------------------------------------------- #
def test_best_span_never_uses_cls_question_or_padding():
    # huge logits everywhere outside the context
    start = logits({0: 50, 1: 40, 3: 40, 11: 60, 12: 60, 6: 2})
    end = logits({0: 50, 2: 40, 10: 40, 11: 60, 12: 60, 7: 3})
    spans = decode_spans(start, end, MASK)
    assert spans[0] == Span(6, 7, 5.0)
    assert all(MASK[s.start] and MASK[s.end] for s in spans)


def test_end_never_before_start():
    start = logits({8: 10, 5: 1})
    end = logits({4: 10, 9: 2})  # best end lies before the best start
    spans = decode_spans(start, end, MASK)
    assert all(s.start <= s.end for s in spans)
    assert spans[0] == Span(8, 9, 12.0)  # 10 + 2 beats (4, 4) at 0 + 10; (8, 4) is not a span


def test_max_answer_len_is_respected():
    start = logits({4: 10})
    end = logits({9: 10, 6: 1})
    spans = decode_spans(start, end, MASK, max_answer_len=3)
    assert all(s.end - s.start + 1 <= 3 for s in spans)
    assert (spans[0].start, spans[0].end) == (4, 6)
    assert (decode_spans(start, end, MASK, max_answer_len=6)[0].start,
            decode_spans(start, end, MASK, max_answer_len=6)[0].end) == (4, 9)


def test_single_token_spans_allowed():
    assert decode_spans(logits({7: 5}), logits({7: 5}), MASK)[0] == Span(7, 7, 10.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top_k", [1, 3, 20])
def test_top_k_spans_in_score_order_match_brute_force(seed, top_k):
    rng = np.random.default_rng(seed)
    start = rng.normal(size=T).astype(np.float32)
    end = rng.normal(size=T).astype(np.float32)
    spans = decode_spans(start, end, MASK, top_k=top_k, max_answer_len=4)
    assert len(spans) <= top_k
    scores = [s.score for s in spans]
    assert scores == sorted(scores, reverse=True)
    assert len({(s.start, s.end) for s in spans}) == len(spans)
    for s in spans:
        assert s.score == pytest.approx(float(start[s.start]) + float(end[s.end]))
        assert MASK[s.start] and MASK[s.end] and 0 <= s.end - s.start < 4
    if top_k >= int(MASK.sum()):  # every token a candidate: exactly the best top_k spans
        best = brute_force(start, end, MASK, 4)
        assert scores == pytest.approx([b[0] for b in best[:top_k]])
        assert (spans[0].start, spans[0].end) == best[0][1:]


def test_no_context_tokens_no_spans():
    assert decode_spans(logits({}), logits({}), np.zeros(T, dtype=bool)) == []


def test_all_equal_logits_give_a_valid_deterministic_span():
    flat = np.zeros(T, dtype=np.float32)
    spans = decode_spans(flat, flat, MASK, max_answer_len=2)
    assert spans and all(MASK[s.start] and MASK[s.end] and 0 <= s.end - s.start < 2 for s in spans)
    assert all(s.score == 0.0 for s in spans)
    assert decode_spans(flat.copy(), flat.copy(), MASK, max_answer_len=2) == spans


def test_huge_logits_same_span_no_overflow():
    start = logits({5: 3.0, 6: 1.0, 0: 9.0})
    end = logits({7: 2.5, 8: 1.5, 0: 9.0})
    small = decode_spans(start, end, MASK)[0]
    big = decode_spans(start * 1e6, end * 1e6, MASK)[0]
    assert (big.start, big.end) == (small.start, small.end) == (5, 7)
    assert np.isfinite(big.score) and big.score == pytest.approx(5.5e6)


# --------------------------------------------------------------------------- #
# decode_answer
# --------------------------------------------------------------------------- #
def test_answer_text_cut_from_context_by_offsets():
    start = logits({0: -5, 7: 4})
    end = logits({0: -5, 8: 4})
    ans = decode_answer(CONTEXT, [start], [end], [OFFSETS])
    assert ans.text == ans.prediction == "Norse raiders"
    assert (ans.char_start, ans.char_end, ans.window) == (14, 27, 0)
    assert ans.span_score == 8.0 and ans.null_score == -10.0 and not ans.no_answer


def test_offsets_that_skip_whitespace_keep_the_original_text():
    context = "  The   Normans ,\tin  France"
    offs = [None, None, (2, 5), (8, 15), (16, 17), (18, 20), (22, 28), None]
    start = logits({3: 5}, n=len(offs))
    end = logits({6: 5}, n=len(offs))
    ans = decode_answer(context, [start], [end], [offs], null_threshold=100)
    assert ans.text == "Normans ,\tin  France"  # the context's own characters, not joined tokens
    assert (ans.char_start, ans.char_end) == (8, 28)


def test_null_score_read_from_cls_before_masking():
    start = logits({0: 7.0, 5: 1.0})
    end = logits({0: 2.0, 5: 1.0})
    ans = decode_answer(CONTEXT, [start], [end], [OFFSETS])
    assert ans.null_score == 9.0  # CLS start + CLS end
    assert ans.window == 0 and ans.char_start != -1  # CLS itself is never the span
    assert ans.no_answer and ans.prediction == "" and ans.text == "led"


def test_best_window_wins_and_null_is_minimum_over_windows():
    ctx = "aa bb cc dd ee ff"
    w0 = [None, None, (0, 2), (3, 5), (6, 8), (9, 11), None]
    w1 = [None, None, (6, 8), (9, 11), (12, 14), (15, 17), None]
    s0, e0 = logits({0: 1.0, 3: 2.0}, n=7), logits({0: 1.0, 4: 2.0}, n=7)  # null 2, span 4 "bb cc"
    s1, e1 = logits({0: 3.0, 4: 3.0}, n=7), logits({0: 3.0, 5: 3.5}, n=7)  # null 6, span 6.5 "ee ff"
    ans = decode_answer(ctx, [s0, s1], [e0, e1], [w0, w1])
    assert (ans.window, ans.text, ans.span_score, ans.null_score) == (1, "ee ff", 6.5, 2.0)
    assert ans.null_score_diff == -4.5 and not ans.no_answer
    # order of the windows does not matter
    rev = decode_answer(ctx, [s1, s0], [e1, e0], [w1, w0])
    assert (rev.window, rev.text, rev.null_score) == (0, "ee ff", 2.0)


def test_null_threshold_decides_no_answer():
    start = logits({0: 3.0, 6: 1.5})  # null 6.0, span (6, 7) 4.0: diff exactly 2.0
    end = logits({0: 3.0, 7: 2.5})
    at = decode_answer(CONTEXT, [start], [end], [OFFSETS], null_threshold=2.0)
    assert at.null_score_diff == 2.0
    assert not at.no_answer and at.prediction == "the Norse"
    above = decode_answer(CONTEXT, [start], [end], [OFFSETS], null_threshold=1.999)
    assert above.no_answer and above.prediction == ""
    assert above.text == "the Norse" and (above.char_start, above.char_end) == (10, 19)
    assert decode_answer(CONTEXT, [start], [end], [OFFSETS]).no_answer  # default threshold 0
    assert not decode_answer(CONTEXT, [start], [end], [OFFSETS], null_threshold=5).no_answer


def test_padding_beyond_offsets_is_never_the_answer():
    start = logits({11: 99, 12: 99, 5: 1})
    end = logits({11: 99, 12: 99, 5: 1})
    ans = decode_answer(CONTEXT, [start], [end], [OFFSETS])  # 13 logits, 11 offsets
    assert ans.text == "led"


def test_window_with_no_context_tokens():
    offs = [None, None, None, None]
    start, end = logits({0: 1.0}, n=4), logits({0: 0.5}, n=4)
    ans = decode_answer(CONTEXT, [start], [end], [offs])
    assert ans.no_answer and ans.prediction == "" and ans.text == ""
    assert (ans.char_start, ans.char_end, ans.window) == (-1, -1, -1)
    assert ans.span_score == float("-inf") and ans.null_score == 1.5
    # next to a window with context: that window's span, the empty window's CLS still counts for null
    s1, e1 = logits({0: 5.0, 4: 2.0}), logits({0: 5.0, 4: 2.0})
    both = decode_answer(CONTEXT, [start, s1], [end, e1], [offs, OFFSETS])
    assert (both.window, both.text, both.null_score) == (1, "Rollo", 1.5)
    assert not both.no_answer


def test_all_equal_and_scaled_logits_in_decode_answer():
    flat = np.zeros(T, dtype=np.float32)
    ans = decode_answer(CONTEXT, [flat], [flat], [OFFSETS], max_answer_len=3)
    assert ans.text and ans.text in CONTEXT and not ans.no_answer  # diff 0 is not above threshold 0
    start = logits({0: 1.0, 8: 2.0}) * 1e6
    end = logits({0: 1.0, 9: 2.0}) * 1e6
    big = decode_answer(CONTEXT, [start], [end], [OFFSETS])
    assert big.text == "raiders to" and np.isfinite(big.null_score_diff) and not big.no_answer


# --------------------------------------------------------------------------- #
# no torch / transformers needed
# --------------------------------------------------------------------------- #
def test_runtime_and_data_modules_import_without_torch_or_transformers():
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'sentencepiece'):\n"
        "    sys.modules[name] = None\n"
        "try:\n"
        "    import torch\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('torch not blocked')\n"
        "import elma.runtime.spans, elma.data.features, elma.data.squad\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
