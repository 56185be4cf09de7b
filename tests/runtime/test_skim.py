"""The skim decision on hand-made logits: CLS, question and separators always stay, threshold 0 keeps every
token, the best candidate spans keep their margins, extreme and all-equal logits; the re-padded gather index
of rows keeping different counts and the device copy runs built from it."""

import numpy as np
import pytest

from elma.runtime.backends import Backend
from elma.runtime.skim import SkimStage, copy_runs, gather_index, keep_positions

# A window: CLS, a 3-token question, SEP, 14 context tokens, SEP.
T = 20
CONTEXT = np.zeros(T, dtype=bool)
CONTEXT[5:19] = True
ANSWER = CONTEXT.copy()
ANSWER[0] = True  # CLS: the no-answer choice
PROTECTED = np.flatnonzero(~CONTEXT)  # 0 (CLS), 1-3 (question), 4 and 19 (separators)


def peaked(*peaks, base=-8.0):
    """Logits at ``base`` everywhere but ``{position: logit}``."""
    x = np.full(T, base, dtype=np.float32)
    for pos, value in peaks:
        x[pos] = value
    return x


def test_a_sharp_span_keeps_its_margin_and_every_non_context_token():
    start, end = peaked((9, 10.0)), peaked((11, 10.0))
    kept = keep_positions(start, end, ANSWER, CONTEXT, threshold=0.01, margin=2, spans=1)
    assert set(PROTECTED) <= set(kept), "CLS, question and separators are never dropped"
    assert sorted(set(kept) - set(PROTECTED)) == list(range(7, 14)), "span 9-11 with 2 tokens each side"
    assert list(kept) == sorted(kept)


def test_protected_tokens_stay_even_at_the_lowest_logits():
    start = peaked((9, 10.0))
    start[PROTECTED] = -1e4
    kept = keep_positions(start, start.copy(), ANSWER, CONTEXT, threshold=0.5, margin=0, spans=1)
    assert set(PROTECTED) <= set(kept) and 9 in kept and len(kept) == len(PROTECTED) + 1


def test_threshold_zero_keeps_every_token():
    rng = np.random.default_rng(0)
    for scale in (1.0, 1e6):
        start, end = (rng.normal(size=T) * scale).astype(np.float32), (rng.normal(size=T) * scale).astype(np.float32)
        assert list(keep_positions(start, end, ANSWER, CONTEXT, threshold=0.0)) == list(range(T))


def test_a_token_stays_when_either_its_start_or_its_end_probability_reaches_the_threshold():
    start = peaked((6, 3.0), (9, 3.0))  # two likely starts
    end = peaked((16, 3.0), (17, 3.0))  # two likely ends
    kept = set(keep_positions(start, end, ANSWER, CONTEXT, threshold=0.2, margin=0, spans=1, max_answer_len=1))
    assert {6, 9, 16, 17} <= kept, "each is above the threshold as a start or as an end"
    assert not kept & {7, 8, 10, 11, 12, 13, 14, 15, 18}


def test_a_best_span_is_kept_whole():
    start, end = peaked((6, 4.0)), peaked((12, 4.0))
    kept = set(keep_positions(start, end, ANSWER, CONTEXT, threshold=0.9, margin=0, spans=1)) - set(PROTECTED)
    assert kept == set(range(6, 13)), "the tokens inside the best span stay, whatever their own probabilities"


def test_the_best_spans_are_kept_below_the_threshold():
    # Three candidate spans of similar strength over a flat background, none of whose probabilities reaches 0.9;
    # answers of at most 3 tokens, so that no span joins one start to another's end.
    start = peaked((6, 4.0), (11, 3.9), (16, 3.8))
    end = peaked((7, 4.0), (12, 3.9), (17, 3.8))
    two = set(keep_positions(start, end, ANSWER, CONTEXT, 0.9, margin=0, spans=2, max_answer_len=3)) - set(PROTECTED)
    assert two == {6, 7, 11, 12}, "the two best spans, the third dropped"
    three = set(keep_positions(start, end, ANSWER, CONTEXT, 0.9, margin=1, spans=3, max_answer_len=3)) - set(PROTECTED)
    assert three == {5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18}, "three spans with one token each side"


def test_the_margin_is_cut_at_the_row_ends():
    start, end = peaked((18, 10.0)), peaked((18, 10.0))
    kept = keep_positions(start, end, ANSWER, CONTEXT, threshold=0.5, margin=5, spans=1)
    assert kept[-1] == T - 1 and set(range(13, 19)) <= set(kept) and 12 not in kept


def test_extreme_and_float16_logits_are_stable():
    start, end = peaked((9, 1e6), base=-1e6), peaked((10, 1e6), base=-1e6)
    kept = keep_positions(start, end, ANSWER, CONTEXT, threshold=0.001, margin=0, spans=1)
    assert set(kept) - set(PROTECTED) == {9, 10}
    start, end = peaked((9, 3e4), base=-3e4).astype(np.float16), peaked((10, 3e4), base=-3e4).astype(np.float16)
    half = keep_positions(start, end, ANSWER, CONTEXT, 0.001, 0, 1)  # exp overflows float16 above ~11
    assert list(half) == list(kept), "float16 engine outputs give the same decision (cast to float32 first)"


def test_all_equal_logits_are_uniform():
    flat = np.zeros(T, dtype=np.float32)
    uniform = 1 / ANSWER.sum()  # 1/15
    assert len(keep_positions(flat, flat, ANSWER, CONTEXT, threshold=uniform * 0.99)) == T
    kept = keep_positions(flat, flat, ANSWER, CONTEXT, threshold=uniform * 1.01, margin=0, spans=1)
    assert len(kept) == len(PROTECTED) + 1, "only the first best span (one token) survives a tie"


def test_masked_positions_get_no_probability():
    """Question tokens are outside the distribution: their huge logits neither stay as context nor steal mass."""
    start = peaked((9, 2.0))
    start[1:4] = 50.0  # question tokens: masked out of the softmax
    kept = set(keep_positions(start, start.copy(), ANSWER, CONTEXT, threshold=0.05, margin=0, spans=1))
    assert 9 in kept, "with the question masked, position 9 carries most of the probability"


def test_rows_keeping_different_counts_are_re_padded_with_real_tokens():
    kept = [np.array([0, 1, 2, 5, 6, 9]), np.array([0, 3]), np.arange(4)]
    index = gather_index(kept, 6)
    assert index.tolist() == [[0, 1, 2, 5, 6, 9], [0, 3, 0, 1, 2, 3], [0, 1, 2, 3, 0, 1]]
    hidden = np.arange(3 * 10 * 2, dtype=np.float32).reshape(3, 10, 2)  # (B, T, H)
    out = Backend().select_tokens(hidden, [2, 0, 1], index)
    assert out.shape == (3, 6, 2) and out.flags.c_contiguous
    np.testing.assert_array_equal(out[0], hidden[2, [0, 1, 2, 5, 6, 9]])
    np.testing.assert_array_equal(out[1, :2], hidden[0, [0, 3]])
    np.testing.assert_array_equal(out[2, :4], hidden[1, :4])


def test_copy_runs_cover_the_index_in_contiguous_pieces():
    row = np.array([0, 1, 2, 5, 6, 9, 0, 1])
    runs = copy_runs(row)
    assert runs == [(0, 0, 3), (3, 5, 2), (5, 9, 1), (6, 0, 2)]
    rebuilt = np.concatenate([np.arange(src, src + n) for _, src, n in runs])
    np.testing.assert_array_equal(rebuilt, row)
    assert copy_runs(np.arange(7)) == [(0, 0, 7)] and copy_runs(np.array([], dtype=int)) == []


@pytest.mark.parametrize("args, match", [((0, 0.1), "layer must be >= 1"), ((2, 1.5), r"\[0, 1\]"),
                                         ((2, -0.1), r"\[0, 1\]"), ((2, 0.1, -1), "margin >= 0"),
                                         ((2, 0.1, 2, 0), "spans >= 1")])
def test_bad_stages_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        SkimStage(*args)


def test_stage_specs_leave_out_the_defaults():
    assert SkimStage(2, 0.001).spec == "skim:2,0.001"
    assert SkimStage(3, 0.05, 4, 1).spec == "skim:3,0.05,4,1"
