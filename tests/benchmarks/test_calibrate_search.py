"""Smoke test of benchmarks/calibrate_search.py: a small synthetic recording goes through every policy's grid
and Learn then Test, and the JSON names what was certified."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import calibrate_search  # noqa: E402

from elma.runtime.policies import SimilarityPolicy  # noqa: E402
from elma.runtime.stats import entropy, max_prob  # noqa: E402


def test_small_run_reports_every_policy(capsys):
    assert calibrate_search.main(["--questions", "120", "--layers", "4", "--tokens", "48", "--delta", "40"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["questions"] == 120 and out["windows"] == 126 and out["settings"] > 50
    assert set(out["certified"]) == {"entropy", "maxprob", "patience", "similarity", "static"}
    assert out["default"] in set(out["certified"].values()) | {"none"} and out["search_s"] >= 0


def test_statistics_over_all_layers_at_once_equal_the_policies_functions_on_long_windows():
    recorded = calibrate_search.synthetic_recording(6, 12, 384, seed=1)
    w = 0
    for q in recorded.questions:
        for lg, m in zip(q.logits, q.answer_masks):
            for layer in range(12):
                want = (float(entropy(lg[layer, 0], m)), float(entropy(lg[layer, 1], m)),
                        min(float(max_prob(lg[layer, 0], m)), float(max_prob(lg[layer, 1], m))))
                assert tuple(recorded._stats()[w, layer].tolist()) == want
            for variant in ("kl", "rekl", "bikl"):
                probe = SimilarityPolicy(variant, 0.0)
                want = [probe.divergence((lg[k - 1, 0], lg[k - 1, 1]), (lg[k, 0], lg[k, 1]), m) for k in range(1, 12)]
                assert recorded._divergences(variant)[w].tolist() == want, variant
            w += 1
