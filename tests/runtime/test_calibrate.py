"""Calibration: one recording pass, policies simulated offline exactly as the runtime runs them, the fastest
setting within the F1 budget written to the manifest, and the runtime's default policy taken from it."""

import json
import shutil

import pytest

pytest.importorskip("onnxruntime")

from conftest import squad_payload  # noqa: E402

from elma.cli import main  # noqa: E402
from elma.data.squad import parse_squad  # noqa: E402
from elma.metrics.squad_v2 import squad_v2_scores  # noqa: E402
from elma.runtime.bundle import load_bundle  # noqa: E402
from elma.runtime.calibrate import CALIBRATED_POLICIES, calibrate, record, search, write_calibration  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402

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


def test_the_fastest_setting_within_budget_is_chosen(bundle, examples):
    with Runtime.open(bundle, policy="none") as rt:
        recorded = record(rt, examples)
    full, chosen, default, points = search(recorded, 0.0, ("static", "entropy"))
    assert full.mean_layers == 3 and points > 10
    assert chosen["entropy"].f1 >= full.f1 - 1e-9 and chosen["static"].f1 >= full.f1 - 1e-9
    anything, chosen_any, default_any, _ = search(recorded, 100.0, ("static", "entropy"))
    assert chosen_any["static"].spec == "static:1" and chosen_any["static"].mean_layers == 1
    assert default_any in (chosen_any["static"].spec, chosen_any["entropy"].spec)
    with pytest.raises(ValueError, match="was not calibrated"):
        search(recorded, 1.0, ("static",), default="entropy")


def test_thresholds_are_written_and_become_the_default(bundle, examples):
    with Runtime.open(bundle) as rt:
        assert rt.policy.spec == "none", "uncalibrated bundles run full depth"
        report = calibrate(rt, examples, max_f1_drop=100.0, policies=("static", "entropy"), default="static")
    write_calibration(bundle, report, "calib.json")
    entry = load_bundle(bundle).manifest["exit_thresholds"]
    assert entry["default"] == "static:1" and entry["data"] == "calib.json" and set(entry["policies"]) == {"static", "entropy"}
    with Runtime.open(bundle) as rt:
        assert rt.policy.spec == "static:1"
        assert rt.ask(examples[0].question, examples[0].context).exit_layer == 1


def test_calibrate_command(bundle, tmp_path, capsys):
    data = tmp_path / "calib.json"
    data.write_text(json.dumps(squad_payload(copies=1)))
    assert main(["calibrate", str(bundle), "--data", str(data), "--max-f1-drop", "1", "--policies", "entropy,static"]) == 0
    out = capsys.readouterr().out
    assert "full depth: F1" in out and "default policy:" in out
    entry = load_bundle(bundle).manifest["exit_thresholds"]
    assert entry["max_f1_drop"] == 1.0 and entry["default"] in {p["spec"] for p in entry["policies"].values()}
    assert main(["calibrate", str(bundle), "--data", str(data), "--max-f1-drop", "1", "--policies", "wobble",
                 "--overwrite"]) == 2
    assert "cannot calibrate policy 'wobble'" in capsys.readouterr().err


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
