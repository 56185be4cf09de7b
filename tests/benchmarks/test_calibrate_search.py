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


def test_the_compact_record_of_long_windows_holds_the_policies_statistics():
    """What the search simulates on: per window and exit, the policies' own statistics of the logits."""
    import numpy as np

    from elma.bench.sweep import ExitRecorder
    from elma.data.squad import Answer, Example

    rng = np.random.default_rng(1)
    tokens, layers = 384, 12
    offsets = [None] * 8 + [(2 * i, 2 * i + 1) for i in range(tokens - 9)] + [None]
    mask = np.array([i == 0 or o is not None for i, o in enumerate(offsets)], dtype=bool)
    logits = rng.normal(0, 2, (layers, 2, tokens)).astype(np.float32)
    recorder = ExitRecorder(layers)
    recorder.add(Example("x", "t", "q?", "a " * tokens, (Answer("a", 0),), False), [(offsets, logits)])
    record = recorder.finish()
    for layer in range(layers):
        want = (float(entropy(logits[layer, 0], mask)), float(entropy(logits[layer, 1], mask)),
                min(float(max_prob(logits[layer, 0], mask)), float(max_prob(logits[layer, 1], mask))))
        assert tuple(record.stats[0, layer].tolist()) == want
    for v, variant in enumerate(("kl", "rekl", "bikl")):
        probe = SimilarityPolicy(variant, 0.0)
        want = [probe.divergence((logits[k - 1, 0], logits[k - 1, 1]), (logits[k, 0], logits[k, 1]), mask)
                for k in range(1, layers)]
        assert record.div[0, v].tolist() == want, variant
    assert record.tokens[0].tolist() == [tokens] * layers
