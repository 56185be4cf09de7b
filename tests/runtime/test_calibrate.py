"""What ``elma calibrate`` records (one compact record per skim setting, ``elma.bench.sweep``'s recorder) and the
outcomes on it: a policy simulated on a record made with skim stages gives exactly what ``Runtime.ask`` gives
for that policy with those stages (answers, exits, token-layers), the agreement with the full-depth answer equals
the metric on the texts, the learn part's grid uses only its questions, and the skim grid is checked."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from conftest import squad_payload  # noqa: E402

from elma.bench import sweep as sw  # noqa: E402
from elma.data.squad import parse_squad  # noqa: E402
from elma.metrics.squad_v2 import question_f1, squad_v2_scores  # noqa: E402
from elma.runtime.calibrate import (  # noqa: E402
    CALIBRATED_POLICIES,
    against_reference,
    full_depth_answers,
    predictions,
    record_all,
    skim_grid,
    subset,
)
from elma.runtime.engine import Runtime  # noqa: E402
from elma.runtime.policies import NoExitPolicy, parse_policy  # noqa: E402

LONG_TEXT = "Paris is the capital of France. " * 12 + "The river is the Seine."
LONG = {"context": LONG_TEXT, "qas": [{"id": "long1", "question": "What is the river?", "is_impossible": False,
                                       "answers": [{"text": "Seine", "answer_start": LONG_TEXT.index("Seine")}]}]}
SKIMS = ("skim:1,0.03", "skim:2,0.05")


@pytest.fixture(scope="module")
def examples():
    payload = squad_payload(copies=1)
    payload["data"][0]["paragraphs"].append(LONG)
    return parse_squad(payload)


@pytest.fixture(scope="module")
def recorded(tiny_bundles, examples):
    with Runtime.open(tiny_bundles.bundle("bert"), policy="none") as rt:
        passes = []
        recordings = record_all(rt, examples, SKIMS, on_pass=lambda i, n, s: passes.append((i, n, s)))
        yield rt, recordings, passes


def test_one_recording_pass_per_skim_setting(recorded, examples):
    _, recordings, passes = recorded
    assert passes == [(1, 3, ""), (2, 3, SKIMS[0]), (3, 3, SKIMS[1])]
    assert list(recordings.records) == ["", *SKIMS]
    full, skimmed = recordings.full, recordings.records[SKIMS[0]]
    assert np.diff(np.append(full.first_window, full.stats.shape[0])).max() > 1, "a multi-window question is included"
    assert (full.tokens == full.tokens[:, :1]).all(), "without skimming every layer runs every token"
    assert (skimmed.tokens[:, 1:] <= skimmed.tokens[:, :1]).all() and (skimmed.tokens[:, 1:] < skimmed.tokens[:, :1]).any()
    assert (skimmed.tokens[:, 0] == full.tokens[:, 0]).all(), "layer 1 runs before the skim stage"


def _policies(record):
    specs = ["static:1", "static:3", "patience:1", "patience:2"]
    for name in ("entropy", "maxprob", "similarity"):
        settings = sw.grid(record, name)
        specs += [p.spec for p in settings[:: max(1, len(settings) // 4)]]
    return specs


@pytest.mark.parametrize("skim", SKIMS)
def test_a_policy_on_a_skimmed_record_is_that_policy_with_the_skim_stages(recorded, examples, skim):
    rt, recordings, _ = recorded
    record = recordings.records[skim]
    bounds = np.append(record.first_window, record.stats.shape[0])
    for spec in _policies(record):
        sim = sw.simulate(record, parse_policy(spec))
        assert sim.spec == f"{spec}+{skim}"
        texts = predictions(record, sim, examples)
        tl = sw.token_layers(record, sim.window_layer)
        for qi, ex in enumerate(examples):
            a = rt.ask(ex.question, ex.context, policy=sim.spec)
            assert tuple(sim.window_layer[bounds[qi]:bounds[qi + 1]]) == a.window_exit_layers, (sim.spec, ex.qid)
            assert texts[qi] == a.text and bool(sim.unsolved[qi]) == a.unsolved, (sim.spec, ex.qid)
            assert tl[qi] == a.token_layers, (sim.spec, ex.qid)
    # The same policy given with its stages is accepted; other stages are refused.
    assert sw.simulate(record, parse_policy(f"static:3+{skim}")).spec == f"static:3+{skim}"
    with pytest.raises(ValueError, match="not the record's"):
        sw.simulate(record, parse_policy("static:3+skim:1,0.5"))


def test_simulated_f1_and_token_layers_without_skimming(recorded, examples):
    rt, recordings, _ = recorded
    full = recordings.full
    gold = {e.qid: e.answer_texts for e in examples}
    for spec in ("none", "static:2", "patience:1"):
        sim = sw.simulate(full, parse_policy(spec))
        answers = rt.ask_batch([(e.question, e.context) for e in examples], policy=spec)
        f1 = squad_v2_scores(gold, {e.qid: a.text for e, a in zip(examples, answers)})["f1"]
        assert 100 * sim.f1.mean() == pytest.approx(f1), spec
        assert sw.token_layers(full, sim.window_layer).tolist() == [a.token_layers for a in answers], spec


def test_agreement_with_the_full_depth_answer_is_the_metric_on_the_texts(recorded, examples):
    rt, recordings, _ = recorded
    full = [a.text for a in rt.ask_batch([(e.question, e.context) for e in examples], policy="none")]
    assert full_depth_answers(recordings) == full
    for skim, record in recordings.records.items():
        scored = against_reference(record, examples, full)
        for name in ("static", "entropy", "patience"):
            for policy in sw.grid(record, name)[::3]:
                texts = predictions(record, sw.simulate(record, policy), examples)
                agreement = sw.simulate(scored, policy).f1
                assert agreement.tolist() == pytest.approx([question_f1([f], t) for f, t in zip(full, texts)]), \
                    (skim, policy.spec)
    none = sw.simulate(against_reference(recordings.full, examples, full), NoExitPolicy()).f1
    assert none.tolist() == [1.0] * len(examples), "full depth agrees with itself"


def test_grid_on_a_subset_uses_only_its_statistics(recorded, examples):
    _, recordings, _ = recorded
    record = recordings.full
    few = np.array([0, 1, len(examples) - 1])  # the last one is the multi-window question
    part = subset(record, few)
    bounds = np.append(record.first_window, record.stats.shape[0])
    windows = np.concatenate([np.arange(bounds[q], bounds[q + 1]) for q in few])
    assert part.stats.shape[0] == windows.size and part.first_window.tolist() == [0, 1, 2]
    assert np.array_equal(part.tokens, record.tokens[windows]) and np.array_equal(part.na_f1, record.na_f1[few])
    sub = sw.grid(part, "maxprob")
    stats = record.stats[windows].reshape(-1, 3)
    assert min(p.threshold for p in sub) == pytest.approx(max(1e-6, round(float(stats[:, 2].min()), 6)))
    assert max(p.threshold for p in sub) == pytest.approx(round(float(stats[:, 2].max()), 6))
    sim, sim_part = sw.simulate(record, sub[3]), sw.simulate(part, sub[3])
    assert np.array_equal(sim.f1[few], sim_part.f1) and np.array_equal(sim.exit_layer[few], sim_part.exit_layer)
    assert [p.spec for p in sw.grid(part, "static")] == [p.spec for p in sw.grid(record, "static")]
    assert set(CALIBRATED_POLICIES) == set(sw.SWEEP_POLICIES)


def test_skim_grid_is_every_layer_and_threshold_checked():
    assert skim_grid([2, 3], [0.001, 0.01], 6) == ["skim:2,0.001", "skim:2,0.01", "skim:3,0.001", "skim:3,0.01"]
    assert skim_grid([], []) == []
    for layers, thresholds, msg in [([2], [], "both"), ([6], [0.01], "layers after it"), ([0], [0.01], "layers after"),
                                    ([2], [0.0], "probability"), ([2], [1.5], "probability")]:
        with pytest.raises(ValueError, match=msg):
            skim_grid(layers, thresholds, 6)


def test_record_exits_refuses_an_exit_policy(tiny_bundles):
    with Runtime.open(tiny_bundles.bundle("bert"), policy="none") as rt:
        with pytest.raises(ValueError, match="full depth"):
            rt.record_exits([("Who?", "Paris is a city.")], skim="entropy:1,1+skim:1,0.01")

