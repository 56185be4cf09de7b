"""Skimming in the runtime on tiny random BERT and ALBERT models (CPU): threshold 0 gives exactly the answers of no
skimming on every backend, ONNX Runtime and torch agree with skimming on, the loop equals the steps run by hand,
each row of a batch keeps its own tokens, policies see the original positions, and answers keep their format."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from conftest import PASSAGES  # noqa: E402

from elma.runtime.engine import MAX_ANSWER_TOKENS, TOP_K, Runtime  # noqa: E402
from elma.runtime.policies import ExitDecision, ExitPolicy, SkimmingPolicy  # noqa: E402
from elma.runtime.skim import SkimStage, keep_positions  # noqa: E402
from elma.runtime.spans import decode_answer  # noqa: E402

ALBERT4 = {"num_hidden_layers": 4}
QUESTIONS = [(q, context) for context, qas in PASSAGES for q, _ in qas]
LONG_CONTEXT = " ".join(context for context, _ in PASSAGES) * 3  # several 64-token windows
ITEMS = QUESTIONS + [("Where did the dog sleep?", LONG_CONTEXT)]
SKIM = "+skim:1,0.03"  # drops a fair share of the context of these tiny random models after layer 1


@pytest.fixture(scope="module", params=[("bert", {}), ("albert", ALBERT4)], ids=["bert", "albert"])
def runtimes(request, tiny_bundles):
    """(onnxruntime on the bundle, torch on the model folder) of one tiny model."""
    name, overrides = request.param
    ort = Runtime.open(tiny_bundles.bundle(name, **overrides))
    torch_rt = Runtime.open(tiny_bundles.model(name, **overrides))
    assert (ort.backend.name, torch_rt.backend.name) == ("onnxruntime", "torch")
    yield ort, torch_rt
    ort.close()
    torch_rt.close()


def outcome(a):
    """What a user sees of an answer, and what it cost in layers and tokens (not the time)."""
    return (a.text, a.char_start, a.char_end, a.no_answer, a.best_span, a.exit_layer, a.unsolved, a.window_exit_layers,
            a.tokens_per_layer)


@pytest.mark.parametrize("policy", ["none", "entropy:2.5,2.5", "patience:1", "similarity:bikl,0.05,1", "static:2"])
def test_threshold_zero_gives_exactly_the_answers_of_no_skimming(runtimes, policy):
    for rt in runtimes:
        plain = rt.ask_batch(ITEMS, policy=policy)
        skimmed = rt.ask_batch(ITEMS, policy=policy + "+skim:1,0+skim:2,0")
        for a, b in zip(plain, skimmed):
            assert outcome(a) == outcome(b) and a.score == b.score, (rt.backend.name, a, b)
            assert b.policy == policy + "+skim:1,0+skim:2,0"


def test_skimming_drops_context_tokens_and_answers_keep_their_format(runtimes):
    rt, _ = runtimes
    plain = rt.ask_batch(ITEMS, policy="none")
    skimmed = rt.ask_batch(ITEMS, policy="none" + SKIM)
    for (_, context), a, b in zip(ITEMS, plain, skimmed):
        assert a.tokens_per_layer == (a.tokens_per_layer[0],) * rt.num_layers, "no skimming: every layer runs all"
        assert b.tokens_per_layer[0] == a.tokens_per_layer[0], "layer 1 runs before the skim"
        assert len(set(b.tokens_per_layer[1:])) == 1 and b.tokens_per_layer[1] <= a.tokens_per_layer[1]
        assert b.token_layers == sum(b.tokens_per_layer)
        assert b.best_span in context
        if b.no_answer:
            assert (b.text, b.char_start, b.char_end) == ("", -1, -1)
        else:
            assert context[b.char_start:b.char_end] == b.text, "offsets are the original context's"
    assert sum(b.token_layers for b in skimmed) < 0.9 * sum(a.token_layers for a in plain), "tokens were dropped"


@pytest.mark.parametrize("policy", ["none" + SKIM, "entropy:2.5,2.5" + SKIM, "none+skim:1,0.02+skim:2,0.06",
                                    "patience:1" + SKIM, "similarity:bikl,0.05,1" + SKIM])
def test_onnxruntime_and_torch_agree_with_skimming_on(runtimes, policy):
    ort, torch_rt = runtimes
    for a, b in zip(ort.ask_batch(ITEMS, policy=policy), torch_rt.ask_batch(ITEMS, policy=policy)):
        assert outcome(a) == outcome(b)
        assert a.score == pytest.approx(b.score, abs=1e-3)


def test_the_loop_equals_the_steps_run_by_hand(runtimes):
    """One window, skim after layer 1: the next layers run on the kept tokens alone; decoding sees only them."""
    rt, _ = runtimes
    question, context = QUESTIONS[0]
    threshold = 0.03
    got = rt.ask(question, context, policy=f"none+skim:1,{threshold}")
    (window,) = rt.windows([(question, context)])
    be = rt.backend
    ids = np.array([window.input_ids], dtype=np.int32)
    hidden = be.run_layer(0, be.embed(ids, np.array([window.token_type_ids], dtype=np.int32)), np.ones_like(ids))
    start, end = be.run_exit(0, hidden, np.ones_like(ids))
    context_mask = np.array([o is not None for o in window.offsets])
    answer_mask = context_mask.copy()
    answer_mask[0] = True
    kept = keep_positions(start[0], end[0], answer_mask, context_mask, threshold, max_answer_len=MAX_ANSWER_TOKENS)
    assert len(kept) < len(window), "the threshold should drop tokens here"
    hidden = np.ascontiguousarray(hidden[:, kept])  # (1, T', H)
    mask = np.ones((1, len(kept)), dtype=np.int32)
    for slot in range(1, rt.num_layers):
        hidden = be.run_layer(slot, hidden, mask)
    start, end = be.run_exit(rt.num_layers - 1, hidden, mask)
    full_start = np.full(len(window), -np.inf, dtype=np.float32)
    full_end = full_start.copy()
    full_start[kept], full_end[kept] = start[0], end[0]
    offsets = [o if i in set(kept.tolist()) else None for i, o in enumerate(window.offsets)]
    want = decode_answer(context, [full_start], [full_end], [offsets], rt.info.null_threshold(rt.num_layers), TOP_K,
                         MAX_ANSWER_TOKENS)
    assert (got.best_span, got.no_answer) == (want.text, want.no_answer)
    assert got.score == pytest.approx(want.span_score - want.null_score, abs=1e-5)
    assert got.tokens_per_layer == (len(window),) + (len(kept),) * (rt.num_layers - 1)


class TokenSpy:
    """Wraps a backend and records every token gather and the attention mask of every layer step."""

    def __init__(self, backend):
        self.inner, self.gathers, self.masks = backend, [], []
        self.name, self.num_layers, self.thread_safe = backend.name, backend.num_layers, backend.thread_safe

    def embed(self, ids, types):
        return self.inner.embed(ids, types)

    def run_layer(self, slot, hidden, mask):
        assert hidden.shape[:2] == mask.shape, (hidden.shape, mask.shape)
        self.masks.append(mask.copy())
        return self.inner.run_layer(slot, hidden, mask)

    def run_exit(self, slot, hidden, mask):
        return self.inner.run_exit(slot, hidden, mask)

    def select_rows(self, hidden, rows, width):
        return self.inner.select_rows(hidden, rows, width)

    def select_tokens(self, hidden, rows, index):
        out = self.inner.select_tokens(hidden, rows, index)
        self.gathers.append((list(rows), index.shape, out.shape))
        return out

    def close(self):
        self.inner.close()


def test_each_row_of_a_batch_keeps_its_own_tokens(tiny_bundles):
    rt = Runtime.open(tiny_bundles.bundle("bert"))
    policy = "none" + SKIM
    single = [rt.ask(q, c, policy=policy) for q, c in ITEMS]
    spy = TokenSpy(rt.backend)
    rt.backend = spy
    batch = rt.ask_batch(ITEMS, policy=policy)
    for a, b in zip(batch, single):
        assert outcome(a) == outcome(b)
        assert a.score == pytest.approx(b.score, abs=1e-3)
    (rows, index_shape, out_shape), = spy.gathers  # one skim stage: one gather, after layer 1
    assert index_shape[0] == len(rows) == sum(a.windows for a in batch) and out_shape[:2] == index_shape
    before, after = spy.masks[0].sum(axis=1), spy.masks[1].sum(axis=1)  # (B,) real tokens per row
    assert len(set((before - after).tolist())) > 1, f"rows should drop different counts ({before - after})"
    assert spy.masks[1].shape[1] == after.max() < spy.masks[0].shape[1], "re-padded to the longest kept row"
    assert all((m[:, :1] == 1).all() and (np.diff(m, axis=1) <= 0).all() for m in spy.masks), "left-aligned rows"
    assert [a.tokens_per_layer[1] for a in batch] == [int(after[sum(b.windows for b in batch[:i]):][:a.windows].sum())
                                                      for i, a in enumerate(batch)]
    rt.close()


class Recorder(ExitPolicy):
    """Never exits; keeps what it was shown (layer, logits length, mask size, dropped positions)."""

    name = "recorder"

    def __init__(self):
        self.seen = []

    def decide(self, layer, start_logits, end_logits, mask=None, state=None):
        dropped = np.flatnonzero(np.isneginf(start_logits))
        assert set(dropped.tolist()) == set(np.flatnonzero(np.isneginf(end_logits)).tolist())
        assert not mask[dropped].any(), "dropped tokens are outside the answer distribution"
        self.seen.append((layer, len(start_logits), int(mask.sum()), len(dropped)))
        return ExitDecision(False, 0.0, "never")

    @property
    def spec(self):
        return "recorder"


def test_policies_see_the_original_positions_with_dropped_tokens_masked(tiny_bundles):
    with Runtime.open(tiny_bundles.bundle("bert")) as rt:
        recorder = Recorder()
        answer = rt.ask(*QUESTIONS[0], policy=SkimmingPolicy(recorder, (SkimStage(1, 0.03),)))
        (l1, n1, m1, d1), (l2, n2, m2, d2), (l3, n3, m3, d3) = recorder.seen
        assert (l1, l2, l3) == (1, 2, 3) and n1 == n2 == n3 == answer.tokens_per_layer[0]
        assert d1 == 0 and d2 == d3 == n1 - answer.tokens_per_layer[1] > 0
        assert m2 == m3 == m1 - d2


def test_skim_stages_are_checked_against_the_model(tiny_bundles):
    with Runtime.open(tiny_bundles.bundle("bert")) as rt:
        with pytest.raises(ValueError, match="skim after layer 3 leaves no layer"):
            rt.ask(*QUESTIONS[0], policy="none+skim:3,0.1")
        with pytest.raises(ValueError, match="static exit layer 9 is beyond"):
            rt.ask(*QUESTIONS[0], policy="static:9+skim:1,0.1")
        a = rt.ask(*QUESTIONS[0], policy="none+skim:2,0.5", max_layer=2)
        assert a.exit_layer == 2 and len(set(a.tokens_per_layer)) == 1, "no skim after the last layer run"
        b = rt.ask(*QUESTIONS[0], policy="static:1+skim:2,0.5")
        assert b.exit_layer == 1 and len(b.tokens_per_layer) == 1 and not b.unsolved
        assert rt.ask(*QUESTIONS[0], policy="none+skim:1,0.5").unsolved is False, "no exit policy: never unsolved"
