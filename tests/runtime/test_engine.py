"""Runtime.ask / ask_batch on tiny random BERT and ALBERT bundles (CPU): answers equal the PyTorch reference at
full depth, batches that shrink equal per-question calls, static exits, the unsolved flag, long contexts."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from conftest import PASSAGES  # noqa: E402

from elma.runtime.engine import MAX_CONTEXT_CHARS, Runtime  # noqa: E402
from elma.runtime.stats import entropy  # noqa: E402

ALBERT4 = {"num_hidden_layers": 4}
QUESTIONS = [(q, context) for context, qas in PASSAGES for q, _ in qas]
LONG_CONTEXT = " ".join(context for context, _ in PASSAGES) * 3  # several 64-token windows


@pytest.fixture(scope="module", params=[("bert", {}), ("albert", ALBERT4)], ids=["bert", "albert"])
def model(request, tiny_bundles):
    name, overrides = request.param
    rt = Runtime.open(tiny_bundles.bundle(name, **overrides))
    yield rt, tiny_bundles.model(name, **overrides)
    rt.close()


def reference(model_dir, items):
    """Full-depth answers of the PyTorch multi-exit model (elma.predict, the core path)."""
    from elma.data.squad import Example
    from elma.model.loading import load_model
    from elma.predict import predict_all_exits

    net, tokenizer = load_model(str(model_dir))
    examples = [Example(str(i), "", q, c, (), False) for i, (q, c) in enumerate(items)]
    return predict_all_exits(net, tokenizer, examples)[-1].answers


def same(a, ref):
    assert (a.no_answer, a.best_span) == (ref.no_answer, ref.text), (a, ref)
    if not a.no_answer:
        assert (a.text, a.char_start, a.char_end) == (ref.text, ref.char_start, ref.char_end)
    assert a.score == pytest.approx(ref.span_score - ref.null_score, abs=1e-3)


def test_full_depth_equals_the_torch_reference(model):
    rt, model_dir = model
    items = QUESTIONS + [("Where did the dog sleep?", LONG_CONTEXT)]
    refs = reference(model_dir, items)
    for (q, c), ref in zip(items, refs):
        a = rt.ask(q, c, policy="none")
        same(a, ref)
        assert a.exit_layer == a.num_layers == rt.num_layers and not a.unsolved
        assert len(a.layer_latency_ms) == rt.num_layers and a.latency_ms >= sum(a.layer_latency_ms) > 0
    for a, ref in zip(rt.ask_batch(items, policy="none"), refs):
        same(a, ref)


def test_onnxruntime_and_torch_backends_agree_at_every_exit(model):
    rt, model_dir = model
    with Runtime.open(model_dir) as ref_rt:
        assert ref_rt.backend.name == "torch" and rt.backend.name == "onnxruntime"
        for k in range(1, rt.num_layers + 1):
            for a, b in zip(rt.ask_batch(QUESTIONS, policy=f"static:{k}"), ref_rt.ask_batch(QUESTIONS, policy=f"static:{k}")):
                assert (a.text, a.char_start, a.no_answer, a.exit_layer) == (b.text, b.char_start, b.no_answer, b.exit_layer)
                assert a.score == pytest.approx(b.score, abs=1e-3)


def test_static_k_exits_at_k(model):
    rt, _ = model
    for k in range(1, rt.num_layers + 1):
        for a in rt.ask_batch(QUESTIONS, policy=f"static:{k}"):
            assert a.exit_layer == k and len(a.layer_latency_ms) == k and not a.unsolved and a.policy == f"static:{k}"


def mixed_entropy_policy(rt):
    """An entropy threshold between the questions' layer-1 entropies, so that rows exit at different layers."""
    h = []
    for windows in rt.record_exits(QUESTIONS):
        window, logits = windows[0]
        amask = np.array([i == 0 or o is not None for i, o in enumerate(window.offsets)])
        h.append(max(float(entropy(logits[0, 0], amask)), float(entropy(logits[0, 1], amask))))
    return f"entropy:{float(np.median(h)):.6f}"


def test_a_shrinking_batch_equals_one_question_at_a_time(model):
    rt, _ = model
    policy = mixed_entropy_policy(rt)
    batch = rt.ask_batch(QUESTIONS + [("Who won the cup?", LONG_CONTEXT)], policy=policy)
    layers = {a.exit_layer for a in batch}
    assert len(layers) > 1, f"the policy should split the batch (exit layers {layers})"
    for (q, c), a in zip(QUESTIONS + [("Who won the cup?", LONG_CONTEXT)], batch):
        b = rt.ask(q, c, policy=policy)
        assert (a.text, a.char_start, a.char_end, a.no_answer, a.exit_layer, a.unsolved, a.window_exit_layers) == (
            b.text, b.char_start, b.char_end, b.no_answer, b.exit_layer, b.unsolved, b.window_exit_layers)
        assert a.score == pytest.approx(b.score, abs=1e-3)


def test_unsolved_when_no_exit_is_confident(model):
    rt, _ = model
    never = "entropy:0,0"  # entropies are never below 0
    a = rt.ask(*QUESTIONS[0], policy=never)
    assert a.unsolved and a.exit_layer == rt.num_layers
    a = rt.ask(*QUESTIONS[0], policy=never, max_layer=2)
    assert a.unsolved and a.exit_layer == 2 and len(a.layer_latency_ms) == 2
    assert not rt.ask(*QUESTIONS[0], policy="entropy:100,100").unsolved  # confident at once
    assert rt.ask(*QUESTIONS[0], policy="entropy:100,100").exit_layer == 1
    assert not rt.ask(*QUESTIONS[0], policy="none").unsolved, "full depth was asked for, nothing is unsolved"


def test_long_contexts_run_every_window(model):
    rt, model_dir = model
    question = "Which river flows through Paris?"
    a = rt.ask(question, LONG_CONTEXT, policy="none")
    assert a.windows > 2 and a.window_exit_layers == (rt.num_layers,) * a.windows
    same(a, reference(model_dir, [(question, LONG_CONTEXT)])[0])
    if not a.no_answer:
        assert LONG_CONTEXT[a.char_start:a.char_end] == a.text
    # per-window exits: each window stops on its own; the question costs its deepest window
    b = rt.ask(question, LONG_CONTEXT, policy=mixed_entropy_policy(rt))
    assert b.exit_layer == max(b.window_exit_layers) and len(b.window_exit_layers) == a.windows


@pytest.mark.parametrize("question, context, match", [
    ("", "Some text.", "question is empty"), ("   ", "Some text.", "question is empty"),
    ("Why?", "", "context is empty"), ("Why?", " \n", "context is empty"),
    ("Why?", "bin\x00ary", "binary"), ("Why?", "x" * (MAX_CONTEXT_CHARS + 1), "limit is"),
])
def test_bad_input_is_refused(tiny_bundles, question, context, match):
    with Runtime.open(tiny_bundles.bundle("bert")) as rt, pytest.raises(ValueError, match=match):
        rt.ask(question, context)


def test_bad_policies_and_layers_are_refused(tiny_bundles):
    with Runtime.open(tiny_bundles.bundle("bert")) as rt:
        for policy, match in [("static:9", "beyond the model's 3 layers"), ("wobble:1", "unknown exit policy")]:
            with pytest.raises(ValueError, match=match):
                rt.ask(*QUESTIONS[0], policy=policy)
        for bad in (0, 4):
            with pytest.raises(ValueError, match="max_layer must be in 1..3"):
                rt.ask(*QUESTIONS[0], max_layer=bad)
        assert rt.ask_batch([]) == []


class Spy:
    """Wraps a backend and records the batch shape every layer step runs on."""

    def __init__(self, backend):
        self.inner, self.shapes, self.exits = backend, [], []
        self.name, self.num_layers, self.thread_safe = backend.name, backend.num_layers, backend.thread_safe

    def embed(self, ids, types):
        return self.inner.embed(ids, types)

    def run_layer(self, slot, hidden, mask):
        self.shapes.append((slot, hidden.shape[0], hidden.shape[1], mask.shape))
        return self.inner.run_layer(slot, hidden, mask)

    def run_exit(self, slot, hidden, mask):
        self.exits.append(slot)
        return self.inner.run_exit(slot, hidden, mask)

    def select_rows(self, hidden, rows, width):
        return self.inner.select_rows(hidden, rows, width)

    def close(self):
        self.inner.close()


def test_only_unfinished_rows_run_the_next_layer(tiny_bundles):
    rt = Runtime.open(tiny_bundles.bundle("bert"))
    policy = mixed_entropy_policy(rt)
    spy = Spy(rt.backend)
    rt.backend = spy
    answers = rt.ask_batch(QUESTIONS, policy=policy)
    for slot, rows, width, mask_shape in spy.shapes:
        unfinished = [a for a in answers if a.exit_layer > slot]
        assert rows == len(unfinished) and mask_shape == (rows, width)
    assert spy.shapes[0][1] == len(QUESTIONS) > spy.shapes[-1][1], spy.shapes
    rt.close()


@pytest.mark.parametrize("policy, heads", [("none", lambda n: [n - 1]), ("static:2", lambda n: [1]),
                                           ("entropy:0,0", lambda n: list(range(n)))])
def test_heads_a_policy_does_not_read_are_not_run(tiny_bundles, policy, heads):
    """Full depth and static:k run one exit head; the answer is the same as with every head run."""
    rt = Runtime.open(tiny_bundles.bundle("bert"))
    heads = heads(rt.num_layers)
    want = rt.ask(*QUESTIONS[0], policy=policy)
    spy = Spy(rt.backend)
    rt.backend = spy
    got = rt.ask(*QUESTIONS[0], policy=policy)
    assert spy.exits == heads and [s[0] for s in spy.shapes] == list(range(heads[-1] + 1))
    assert (got.text, got.exit_layer, len(got.layer_latency_ms)) == (want.text, want.exit_layer, heads[-1] + 1)
    recorded = rt.record_exits([QUESTIONS[0]])
    assert len(recorded[0][0][1]) == rt.num_layers, "recording still reads every exit"
    rt.close()
