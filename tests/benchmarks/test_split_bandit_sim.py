"""benchmarks/split_bandit_sim.py: a question's outcome under each split by hand, fixed splits and the bandit on a
synthetic recording with a known best split, and a smoke run of record -> tune -> simulate on a tiny bundle."""

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import split_bandit_sim as sim  # noqa: E402
from conftest import squad_payload  # noqa: E402

from elma.errors import OutputExistsError  # noqa: E402
from elma.offload.split import SplitCosts  # noqa: E402

COSTS = SplitCosts((10.0, 20.0, 30.0, 40.0), 15.0)


def _q(exit_layer, f1_local=0.5, f1_full=1.0):
    return {"qid": "q", "windows": 1, "exit_layer": exit_layer, "exit_confidence": 0.9 if exit_layer else None,
            "confidence": [0.2, 0.9, 0.95, 0.97], "f1_local": f1_local if exit_layer else None, "f1_full": f1_full}


def test_outcome_of_a_question_under_each_split():
    q = _q(2)
    assert sim.outcome(q, 1, 4, COSTS) == sim.Outcome(1, True, None, None, 25.0, 1.0)  # offloaded after layer 1
    assert sim.outcome(q, 3, 4, COSTS) == sim.Outcome(2, False, 2, 0.9, 20.0, 0.5)  # exits at 2
    never = _q(None)
    assert sim.outcome(never, 3, 4, COSTS) == sim.Outcome(3, True, None, None, 45.0, 1.0)
    assert sim.outcome(never, 4, 4, COSTS) == sim.Outcome(4, False, 4, 0.97, 40.0, 1.0)  # last layer: no offload


def _recording(n=1500, seed=0):
    rng = random.Random(seed)
    return {"data": "synthetic", "policy": "p", "num_layers": 4,
            "questions": [_q(2) if rng.random() < 0.8 else _q(None) for _ in range(n)]}


def test_fixed_splits_and_a_bandit_that_finds_the_best_one():
    rec = _recording()
    result = sim.evaluate(rec, COSTS, mu=4.0, exploration=0.05, orders=3, checkpoints=(500, 3000))
    fixed = {f["split"]: f for f in result["fixed"]}
    n2 = sum(q["exit_layer"] == 2 for q in rec["questions"])
    share = n2 / len(rec["questions"])
    assert fixed[2]["cost_ms"] == pytest.approx(share * 20 + (1 - share) * 35)
    assert fixed[1]["offload_rate"] == 1.0 and fixed[4]["offload_rate"] == 0.0
    assert fixed[2]["f1"] == pytest.approx(100 * (share * 0.5 + (1 - share)))
    assert result["best_fixed"]["split"] == 2
    last = result["bandit"][-1]
    assert last["questions"] == 3000 and last["cost_vs_best"] < 1.05 and last["best_arm_share"] > 0.8
    assert result["bandit"][0]["regret_reward_mean"] < last["regret_reward_mean"] < 6 * result["bandit"][0]["regret_reward_mean"]


def test_record_tune_simulate_on_a_tiny_bundle(tiny_bundles, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    bundle = str(tiny_bundles.bundle("bert"))
    data = tmp_path / "d.json"
    data.write_text(json.dumps(squad_payload(copies=2)))
    rec_path = tmp_path / "rec.json"
    assert sim.main(["record", "--model", bundle, "--data", str(data), "--policy", "maxprob:0.2", "-o", str(rec_path)]) == 0
    rec = json.loads(rec_path.read_text())
    assert rec["num_layers"] == 3 and len(rec["questions"]) == 12 and rec["policy"] == "maxprob:0.2"
    for q in rec["questions"]:
        assert len(q["confidence"]) == 3 and 0 <= q["f1_full"] <= 1
        assert (q["exit_layer"] is None) == (q["f1_local"] is None) == (q["exit_confidence"] is None)
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"layer_ms": [3.0, 6.0, 9.0], "offload_ms": 5.0, "sources": {"all": "made up"}}))
    assert sim.main(["tune", str(rec_path), "--costs", str(costs), "--orders", "2"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["mu"] in sim.MU_GRID and tuned["exploration"] in sim.EXPLORATION_GRID
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["simulate", str(rec_path), "--costs", str(costs), "--mu", "1", "--exploration", "0.1", "--orders", "2",
            "--checkpoints", "5,20", "-o", str(out), "--markdown", str(md)]
    assert sim.main(argv) == 0
    result = json.loads(out.read_text())
    assert [p["questions"] for p in result["bandit"]] == [5, 20] and len(result["fixed"]) == 3
    assert "best in hindsight" in md.read_text() and "made up" in md.read_text()
    with pytest.raises(OutputExistsError):  # an output that is already there is refused
        sim.main(argv)
    before = out.read_text()
    assert sim.run(argv) == 2, "from the command line: one line and exit 2, not a traceback"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("split_bandit_sim: error: ") and out.read_text() == before
