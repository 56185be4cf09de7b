"""Smoke test of benchmarks/skim_tokens.py on a tiny bundle: threshold 0 changes nothing, a skim stage cuts the
token-layers, the fused graph gives the full-depth F1, and bad specs are usage errors."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import skim_tokens  # noqa: E402


def test_token_layers_f1_and_latency_per_spec(tiny_bundles, tiny_squad, capsys):
    bundle = str(tiny_bundles.bundle("bert"))
    specs = ["none+skim:1,0", "none+skim:1,0.03", "static:2+skim:1,0.03"]
    argv = [bundle, "--data", str(tiny_squad), "--limit", "6", "--warmup", "1"]
    assert skim_tokens.main(argv + [a for s in specs for a in ("--policy", s)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["policy"]: r for r in out["policies"]}
    assert list(rows) == ["none", *specs] and out["questions"] == 6
    full, zero, skim, static = (rows[s] for s in ["none", *specs])
    assert zero["mean_token_layers"] == full["mean_token_layers"] and zero["f1"] == full["f1"]
    assert skim["token_layers_vs_full"] > 1 and skim["mean_exit_layer"] == 3
    assert skim["mean_tokens_per_layer"] < full["mean_tokens_per_layer"]
    assert static["mean_exit_layer"] == 2 and static["mean_token_layers"] < skim["mean_token_layers"]
    assert out["fused"]["f1"] == pytest.approx(full["f1"])
    assert skim["speedup_vs_fused"] == pytest.approx(out["fused"]["mean_ms"] / skim["mean_ms"])


@pytest.mark.parametrize("spec, match", [("none+skim:2", "skim:LAYER,THRESHOLD"),
                                         ("none+skim:3,0.1", "leaves no layer")])
def test_bad_specs_are_usage_errors(tiny_bundles, tiny_squad, capsys, spec, match):
    with pytest.raises(SystemExit) as err:
        skim_tokens.main([str(tiny_bundles.bundle("bert")), "--data", str(tiny_squad), "--policy", spec])
    assert err.value.code == 2 and match in capsys.readouterr().err
