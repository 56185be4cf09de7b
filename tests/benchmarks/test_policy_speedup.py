"""Smoke test of benchmarks/policy_speedup.py on a tiny bundle: full depth through the chain and through the
fused graph give the same answers; a static exit uses fewer layers."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import policy_speedup  # noqa: E402


def test_full_depth_chain_and_fused_graph_agree(tiny_bundles, tiny_squad, capsys):
    bundle = str(tiny_bundles.bundle("bert"))
    assert policy_speedup.main([bundle, "--data", str(tiny_squad), "--policy", "static:1", "--limit", "6",
                                "--warmup", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["questions"] == 6 and out["mean_exit_layer"] == 1 < out["num_layers"]
    assert out["f1"]["full_depth"] == pytest.approx(out["f1"]["fused"])
    assert out["speedup_vs_full_depth"] == pytest.approx(out["mean_ms"]["full_depth"] / out["mean_ms"]["policy"])
