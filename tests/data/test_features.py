"""Sliding windows: geometry, question handling and answer labels that map back to
exactly the gold text, for a tiny WordPiece tokenizer and the real ALBERT one."""

from __future__ import annotations

from pathlib import Path

import pytest

from elma.data.features import WindowConfig, build_windows, char_span_to_tokens
from elma.data.squad import Answer, Example

SPIECE = Path(__file__).resolve().parents[2].parent / "shared/data/albert-base-v2/spiece.model"

FILLER = "The old army of the king crossed the river near the bridge. "
ANSWER_SENTENCE = "The leader of the Norse raiders was Rollo, Duke of Normandy. "
QUESTION = "Who was the leader of the Norse raiders?"
CONFIG = WindowConfig(max_seq_length=48, doc_stride=16, max_query_length=16)


@pytest.fixture(scope="module")
def albert_tokenizer():
    if not SPIECE.is_file():
        pytest.skip(f"ALBERT SentencePiece model not found at {SPIECE}")
    pytest.importorskip("transformers", reason="converting spiece.model needs transformers")
    pytest.importorskip("sentencepiece", reason="converting spiece.model needs sentencepiece")
    from elma.tokenization import load_tokenizer

    return load_tokenizer(SPIECE)


@pytest.fixture(params=["wordpiece", "albert"])
def tokenizer(request):
    tok = request.getfixturevalue(f"{request.param}_tokenizer")
    tok.no_truncation()  # the ALBERT one is shared by the module; build_windows sets truncation on it
    return tok


def example(context: str, answer: "str | None", qid: str = "q", question: str = QUESTION,
            start: "int | None" = None) -> Example:
    if answer is None:
        return Example(qid, "t", question, context, (), True)
    start = context.index(answer) if start is None else start
    return Example(qid, "t", question, context, (Answer(answer, start),), False)


def context_offsets(window):
    return [o for o in window.offsets if o is not None]


def labelled_text(window, context: str) -> str:
    return context[window.offsets[window.start_position][0]:window.offsets[window.end_position][1]]


LONG_CONTEXT = FILLER * 6 + ANSWER_SENTENCE + FILLER * 6
LONG_ANSWER = "Rollo, Duke of Normandy"


# --------------------------------------------------------------------------- #
# both tokenizers
# --------------------------------------------------------------------------- #
def test_albert_tokenizer_has_its_real_vocabulary(albert_tokenizer):
    # a failed conversion gives a 5-token vocabulary where every word is <unk>
    assert albert_tokenizer.get_vocab_size() == 30000
    enc = albert_tokenizer.encode("The Normans", add_special_tokens=False)
    assert albert_tokenizer.token_to_id("<unk>") not in enc.ids


@pytest.mark.parametrize("stride", [16, 5])
def test_long_context_gives_overlapping_windows_within_max_length(tokenizer, stride):
    cfg = WindowConfig(max_seq_length=48, doc_stride=stride, max_query_length=16)
    windows = build_windows([example(LONG_CONTEXT, LONG_ANSWER)], tokenizer, cfg)
    assert len(windows) >= 3
    for w in windows:
        assert w.example_index == 0
        assert len(w) <= cfg.max_seq_length
        assert len(w.input_ids) == len(w.token_type_ids) == len(w.offsets)
    for a, b in zip(windows, windows[1:]):
        ca, cb = context_offsets(a), context_offsets(b)
        assert ca[-stride:] == cb[:stride], "consecutive windows must share doc_stride context tokens"
        assert cb[stride][0] >= ca[-1][1], "windows overlap by more than doc_stride"
    # nothing of the context is lost: the windows together hold every context token once
    tokenizer.no_truncation()  # build_windows leaves "only_second" truncation on
    full = tokenizer.encode(LONG_CONTEXT, add_special_tokens=False).offsets
    joined = context_offsets(windows[0]) + [o for w in windows[1:] for o in context_offsets(w)[stride:]]
    assert joined == [tuple(o) for o in full]


def test_every_window_is_cls_question_sep_context_sep(tokenizer):
    windows = build_windows([example(LONG_CONTEXT, LONG_ANSWER)], tokenizer, CONFIG)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    q_ids = tokenizer.encode(QUESTION, add_special_tokens=False).ids
    n = len(q_ids)
    for w in windows:
        assert w.input_ids[0] == cls
        assert w.input_ids[1:n + 1] == q_ids
        assert w.input_ids[n + 1] == sep and w.input_ids[-1] == sep
        assert w.token_type_ids == [0] * (n + 2) + [1] * (len(w) - n - 2)
        # offsets only on context tokens
        assert all(o is None for o in w.offsets[:n + 2]) and w.offsets[-1] is None
        assert all(o is not None for o in w.offsets[n + 2:-1])


def test_answer_label_maps_back_to_exact_gold_text(tokenizer):
    ex = example(LONG_CONTEXT, LONG_ANSWER)
    a = ex.answers[0]
    windows = build_windows([ex], tokenizer, CONFIG)
    holding = 0
    for w in windows:
        ctx = context_offsets(w)
        inside = ctx[0][0] <= a.answer_start and a.answer_start + len(a.text) <= ctx[-1][1]
        if inside:
            holding += 1
            assert 0 < w.start_position <= w.end_position < len(w)
            assert labelled_text(w, LONG_CONTEXT) == LONG_ANSWER
            assert w.offsets[w.start_position][0] == a.answer_start
        else:
            assert (w.start_position, w.end_position) == (0, 0)
    assert holding >= 1 and holding < len(windows)


def test_answer_cut_by_a_window_edge_is_labelled_only_where_whole(tokenizer):
    """The same phrase at every filler position: some windows cut it, and those must say (0, 0)."""
    phrase = "the king crossed the river near the bridge"
    context = FILLER * 14
    starts = [i * len(FILLER) + FILLER.index(phrase) for i in range(14)]
    examples = [example(context, phrase, qid=f"q{i}", start=s) for i, s in enumerate(starts)]
    windows = build_windows(examples, tokenizer, CONFIG, batch_size=4)
    assert sorted({w.example_index for w in windows}) == list(range(14))
    assert [w.example_index for w in windows] == sorted(w.example_index for w in windows)
    straddling = 0
    for w in windows:
        s = starts[w.example_index]
        e = s + len(phrase)
        ctx = context_offsets(w)
        lo, hi = ctx[0][0], ctx[-1][1]
        if lo <= s and e <= hi:
            assert labelled_text(w, context) == phrase
            assert w.offsets[w.start_position][0] == s and w.offsets[w.end_position][1] == e
        else:
            straddling += s < hi and lo < e
            assert (w.start_position, w.end_position) == (0, 0)
    assert straddling > 0, "test should include answers cut by a window edge"
    for i in range(14):  # every answer is whole in at least one window
        assert any(w.start_position for w in windows if w.example_index == i)


def test_accented_and_subword_answers_map_back_to_original_characters(tokenizer):
    context = "The Normans built the Café Zürich by the river. Its leader was a Norman duke."
    for answer, start in [("Café Zürich", None), ("Normans", None), ("Norman", context.rindex("Norman"))]:
        ex = example(context, answer, start=start)
        (w,) = build_windows([ex], tokenizer, CONFIG)
        assert labelled_text(w, context) == answer
        assert w.offsets[w.start_position][0] == ex.answers[0].answer_start


def test_unanswerable_and_unlabelled_windows_point_at_cls(tokenizer):
    exs = [example(LONG_CONTEXT, None, qid="imp"), example(LONG_CONTEXT, LONG_ANSWER, qid="ans")]
    windows = build_windows(exs, tokenizer, CONFIG)
    assert {w.example_index for w in windows} == {0, 1}
    assert all((w.start_position, w.end_position) == (0, 0) for w in windows if w.example_index == 0)
    assert any(w.start_position > 0 for w in windows if w.example_index == 1)
    unlabelled = build_windows(exs, tokenizer, CONFIG, with_labels=False)
    assert all((w.start_position, w.end_position) == (0, 0) for w in unlabelled)
    assert [w.input_ids for w in unlabelled] == [w.input_ids for w in windows]


@pytest.mark.parametrize("repeat", [2, 6], ids=["longer-than-max-query", "longer-than-max-seq"])
def test_long_question_is_cut_to_max_query_length(tokenizer, repeat):
    question = "who was the leader of the norse raiders that crossed the river near the old bridge " * repeat
    cfg = WindowConfig(max_seq_length=48, doc_stride=8, max_query_length=10)
    full_q = tokenizer.encode(question, add_special_tokens=False).ids
    assert len(full_q) > 10
    windows = build_windows([example(LONG_CONTEXT, LONG_ANSWER, question=question)], tokenizer, cfg)
    for w in windows:
        q_part = [t for t, typ in zip(w.input_ids, w.token_type_ids) if typ == 0][1:-1]  # drop CLS, SEP
        assert q_part == full_q[:10]
        assert len(w) <= cfg.max_seq_length
    assert any(labelled_text(w, LONG_CONTEXT) == LONG_ANSWER for w in windows if w.start_position)


def test_short_context_is_one_unpadded_window(tokenizer):
    context = "Rollo was the leader."
    (w,) = build_windows([example(context, "Rollo")], tokenizer, CONFIG)
    assert len(w) < CONFIG.max_seq_length
    assert tokenizer.token_to_id("[PAD]") not in w.input_ids and tokenizer.token_to_id("<pad>") not in w.input_ids
    assert labelled_text(w, context) == "Rollo"


# --------------------------------------------------------------------------- #
# WindowConfig
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kwargs", [
    dict(max_seq_length=64, max_query_length=64, doc_stride=0),  # no room for context
    dict(max_seq_length=68, max_query_length=64, doc_stride=0),  # room 0
    dict(max_seq_length=384, max_query_length=0, doc_stride=128),
    dict(max_seq_length=48, max_query_length=16, doc_stride=28),  # stride == room
    dict(max_seq_length=48, max_query_length=16, doc_stride=100),
    dict(max_seq_length=48, max_query_length=16, doc_stride=-1),
])
def test_invalid_window_config_raises_value_error(kwargs):
    with pytest.raises(ValueError, match="max_seq_length"):
        WindowConfig(**kwargs)


def test_window_config_boundaries_and_defaults():
    WindowConfig(max_seq_length=48, max_query_length=16, doc_stride=27)  # room 28: largest stride
    WindowConfig(max_seq_length=48, max_query_length=16, doc_stride=0)
    WindowConfig(max_seq_length=69, max_query_length=64, doc_stride=0)  # room 1
    d = WindowConfig()
    assert (d.max_seq_length, d.doc_stride, d.max_query_length) == (384, 128, 64)


# --------------------------------------------------------------------------- #
# char_span_to_tokens
# --------------------------------------------------------------------------- #
# [CLS] q [SEP] "The"(0,3) "Norm"(4,8) "##ans"(8,11) "left"(12,16) [SEP]
OFFS = [None, None, None, (0, 3), (4, 8), (8, 11), (12, 16), None]


@pytest.mark.parametrize("span, expected", [
    ((0, 3), (3, 3)),
    ((4, 11), (4, 5)),  # a word of two pieces
    ((0, 16), (3, 6)),  # the whole window
    ((5, 7), (4, 4)),  # inside one token: that token
    ((9, 14), (5, 6)),  # partial tokens at both ends: the covering tokens
    ((3, 4), None),  # only the space between tokens
    ((12, 17), None),  # runs past the window
    ((20, 25), None),  # after the window
])
def test_char_span_to_tokens(span, expected):
    assert char_span_to_tokens(OFFS, *span) == expected


def test_char_span_to_tokens_starting_before_window():
    later = [None, (10, 14), (15, 20), None]
    assert char_span_to_tokens(later, 5, 12) is None
    assert char_span_to_tokens(later, 10, 20) == (1, 2)


def test_char_span_to_tokens_without_context_tokens():
    assert char_span_to_tokens([None, None, None], 0, 1) is None
    assert char_span_to_tokens([], 0, 1) is None
