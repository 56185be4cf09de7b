"""Recording once and simulating policies offline exactly as the runtime runs them (what ``elma calibrate``
and ``elma-bench --sweep`` build on); per-question outcomes equal the official metric."""

import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from conftest import squad_payload  # noqa: E402

from elma.data.squad import parse_squad  # noqa: E402
from elma.metrics.squad_v2 import question_f1, squad_v2_scores  # noqa: E402
from elma.runtime.calibrate import CALIBRATED_POLICIES, record  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402
from elma.runtime.policies import NoExitPolicy  # noqa: E402

LONG_TEXT = "Paris is the capital of France. " * 12 + "The river is the Seine."
LONG = {"context": LONG_TEXT, "qas": [{"id": "long1", "question": "What is the river?", "is_impossible": False,
                                       "answers": [{"text": "Seine", "answer_start": LONG_TEXT.index("Seine")}]}]}


@pytest.fixture(scope="module")
def examples():
    payload = squad_payload(copies=1)
    payload["data"][0]["paragraphs"].append(LONG)
    return parse_squad(payload)


@pytest.fixture
def bundle(tiny_bundles, tmp_path):
    return shutil.copytree(tiny_bundles.bundle("bert"), tmp_path / "bundle")


def real_score(rt, examples, policy):
    answers = rt.ask_batch([(e.question, e.context) for e in examples], policy=policy)
    preds = {e.qid: a.text for e, a in zip(examples, answers)}
    f1 = squad_v2_scores({e.qid: e.answer_texts for e in examples}, preds)["f1"]
    return f1, sum(a.exit_layer for a in answers) / len(answers), sum(a.unsolved for a in answers) / len(answers)


def test_simulation_equals_running_the_policy(bundle, examples):
    with Runtime.open(bundle, policy="none") as rt:
        recorded = record(rt, examples, batch_size=3)
        assert any(len(q.logits) > 1 for q in recorded.questions), "a multi-window question is included"
        for name in CALIBRATED_POLICIES:
            for policy in recorded.grid(name)[::5]:
                sim = recorded.simulate(policy)
                f1, layers, unsolved = real_score(rt, examples, policy)
                assert (sim.f1, sim.mean_layers, sim.unsolved_rate) == pytest.approx((f1, layers, unsolved)), policy.spec


def test_per_question_outcomes_match_the_metric_and_the_full_depth_answer(bundle, examples):
    with Runtime.open(bundle, policy="none") as rt:
        recorded = record(rt, examples, batch_size=4)
        full = [a.text for a in rt.ask_batch([(e.question, e.context) for e in examples], policy="none")]
    assert recorded.full_depth_answers() == full
    for name in ("static", "entropy", "patience"):
        for policy in recorded.grid(name)[::4]:
            wl, _ = recorded.exit_layers(policy)
            gold_f1, full_f1 = recorded.outcomes(wl)
            again = recorded.outcomes(wl)  # from the cache
            assert np.array_equal(gold_f1, again[0]) and np.array_equal(full_f1, again[1])
            assert 100 * gold_f1.mean() == pytest.approx(recorded.simulate(policy).f1), policy.spec
            exits = recorded.window_exits(policy)
            texts = [recorded.prediction(qi, tuple(layer for layer, _ in w)) for qi, w in enumerate(exits)]
            assert full_f1.tolist() == pytest.approx([question_f1([f], t) for f, t in zip(full, texts)]), policy.spec
            assert recorded.question_layers(wl).tolist() == [max(layer for layer, _ in w) for w in exits]
    wl, _ = recorded.exit_layers(NoExitPolicy())
    assert recorded.outcomes(wl)[1].tolist() == [1.0] * len(examples), "full depth agrees with itself"


def test_grid_on_a_subset_uses_only_its_statistics(bundle, examples):
    with Runtime.open(bundle, policy="none") as rt:
        recorded = record(rt, examples)
    few = np.array([0, 1])
    sub = recorded.grid("maxprob", questions=few)
    stats = np.concatenate([recorded._stats()[recorded._window_question == i] for i in few]).reshape(-1, 3)
    assert min(p.threshold for p in sub) == pytest.approx(max(1e-6, round(float(stats[:, 2].min()), 6)))
    assert max(p.threshold for p in sub) == pytest.approx(round(float(stats[:, 2].max()), 6))
    assert [p.spec for p in recorded.grid("static", questions=few)] == [p.spec for p in recorded.grid("static")]


def test_threshold_policies_fast_path_equals_deciding_layer_by_layer(bundle, examples):
    with Runtime.open(bundle, policy="none") as rt:
        recorded = record(rt, examples)
    for policy in recorded.grid("entropy")[::7] + recorded.grid("maxprob"):
        fast = recorded.window_exits(policy)
        decided = [[_decide(recorded, policy, lg, m) for lg, m in zip(q.logits, q.answer_masks)] for q in recorded.questions]
        assert fast == decided, policy.spec


def _decide(recorded, policy, logits, mask):
    for layer in range(1, recorded.num_layers + 1):
        if policy.decide(layer, logits[layer - 1, 0], logits[layer - 1, 1], mask).exit:
            return (layer, True)
    return (recorded.num_layers, False)


def test_counting_policies_fast_path_equals_deciding_layer_by_layer(bundle, examples):
    with Runtime.open(bundle, policy="none") as rt:
        recorded = record(rt, examples)
    for policy in recorded.grid("patience") + recorded.grid("similarity")[::3]:
        decided = [[_decide_stateful(recorded, policy, lg, m) for lg, m in zip(q.logits, q.answer_masks)]
                   for q in recorded.questions]
        assert recorded.window_exits(policy) == decided, policy.spec


def _decide_stateful(recorded, policy, logits, mask):
    state = None
    for layer in range(1, recorded.num_layers + 1):
        d = policy.decide(layer, logits[layer - 1, 0], logits[layer - 1, 1], mask, state)
        state = d.state
        if d.exit:
            return (layer, True)
    return (recorded.num_layers, False)
