"""The sweep's compact record of every exit: simulating a policy on it gives exactly what ``Runtime.ask`` does
(exit layers per window, answer, no-answer probability), multi-window questions included, and what it keeps
per question is a few hundred bytes, whatever the window length."""

import numpy as np
import pytest
from conftest import PASSAGES

from elma.bench import sweep as sw
from elma.bench.results import na_prob
from elma.data.squad import Answer, Example
from elma.runtime.policies import parse_policy

LONG = " ".join(c for c, _ in PASSAGES) * 2  # several 64-token windows on the tiny models


def _examples():
    out = []
    for c, qas in PASSAGES:
        for q, a in qas:
            out.append(Example(f"s{len(out)}", "t", q, c, (Answer(a, c.index(a)),) if a else (), a is None))
            out.append(Example(f"l{len(out)}", "t", q, LONG, (Answer(a, LONG.index(a)),) if a else (), a is None))
    return out


@pytest.fixture(scope="module")
def recorded(tiny_bundles):
    pytest.importorskip("onnxruntime")
    from elma.runtime.engine import Runtime

    rt = Runtime.open(tiny_bundles.bundle("bert"))
    examples = _examples()
    record = sw.record_exits(rt, examples)
    yield rt, examples, record
    rt.close()


def test_some_questions_have_several_windows(recorded):
    _, examples, record = recorded
    windows = np.diff(np.append(record.first_window, record.stats.shape[0]))
    assert windows.max() >= 3 and windows.min() == 1 and len(windows) == len(examples)


def _policies(record):
    specs = ["none", "static:1", "static:2", "patience:1", "patience:2"]
    for name in ("entropy", "maxprob", "similarity"):
        settings = sw.grid(record, name)
        specs += [p.spec for p in settings[:: max(1, len(settings) // 6)]]
    return specs


def test_simulation_equals_the_runtime(recorded):
    rt, examples, record = recorded
    specs = _policies(record)
    assert len(specs) > 15
    exits_seen = set()
    for spec in specs:
        policy = parse_policy(spec)
        sim = sw.simulate(record, policy)
        starts = np.append(record.first_window, sim.window_layer.shape[0])
        results = sw.question_results(record, sim, examples, [0.0] * len(examples), [0.0] * len(examples))
        for qi, ex in enumerate(examples):
            a = rt.ask(ex.question, ex.context, policy=policy)
            assert tuple(sim.window_layer[starts[qi]:starts[qi + 1]]) == a.window_exit_layers, (spec, ex.qid)
            assert results[qi].exit_layer == a.exit_layer and results[qi].prediction == a.text, (spec, ex.qid)
            assert results[qi].unsolved == a.unsolved, (spec, ex.qid)
            assert results[qi].na_prob == pytest.approx(na_prob(a.score, rt.info.null_threshold(a.exit_layer)), abs=1e-6)
            exits_seen.add(a.exit_layer)
    assert exits_seen == {1, 2, 3}, "the policies tried exit at every layer"


def test_simulated_f1_is_the_official_f1(recorded):
    from elma.metrics.squad_v2 import squad_v2_scores

    _, examples, record = recorded
    gold = {ex.qid: ex.answer_texts for ex in examples}
    for spec in ("none", "static:1", "patience:1"):
        sim = sw.simulate(record, parse_policy(spec))
        res = sw.question_results(record, sim, examples, [0.0] * len(examples), [0.0] * len(examples))
        official = squad_v2_scores(gold, {r.qid: r.prediction for r in res})
        assert 100 * sim.f1.mean() == pytest.approx(official["f1"]) and 100 * sim.em.mean() == pytest.approx(official["exact"])


def _synthetic(recorder, tokens: int, windows: int, seed: int):
    rng = np.random.default_rng(seed)
    context = "word " * tokens
    offsets = [None] * 6 + [(5 * i, 5 * i + 4) for i in range(tokens - 7)] + [None]
    ex = Example(f"x{seed}", "t", "what?", context, (Answer("word", 0),), False)
    recorder.add(ex, [(offsets, rng.normal(size=(recorder.num_layers, 2, tokens)).astype(np.float32))
                      for _ in range(windows)])


@pytest.mark.parametrize("layers", [3, 6, 12])
def test_record_bytes_per_question_are_bounded_and_do_not_grow_with_window_length(layers):
    sizes = {}
    for tokens in (64, 384):
        recorder = sw.ExitRecorder(layers)
        for i in range(20):
            _synthetic(recorder, tokens, windows=1 + i % 3, seed=i)
        sizes[tokens] = recorder.finish().nbytes
    assert sizes[64] == sizes[384], "logits are not kept: a longer window costs nothing more"
    per_window = sizes[64] / 40  # 20 questions, 40 windows
    assert per_window <= 112 * layers + 8 * 3 * (layers - 1) + 64, per_window
    full_dev = 6078 * 1.1 * per_window  # the SQuAD 2.0 dev half: about 1.1 windows per question at 384 tokens
    assert full_dev < 20e6, f"{full_dev / 1e6:.1f} MB for the full dev set"


def test_simulated_latency_sums_steps_up_to_the_exit():
    layer_ms = np.array([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    other_ms = np.array([10.0, 20.0])
    assert sw.simulated_latency_ms(np.array([2, 3]), other_ms, layer_ms).tolist() == [13.0, 23.0]


def test_recorder_refuses_the_wrong_depth():
    with pytest.raises(ValueError, match="3 exits"):
        sw.ExitRecorder(3).add(Example("x", "t", "q?", "c", (), True), [([None], np.zeros((2, 2, 1), dtype=np.float32))])
