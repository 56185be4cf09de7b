"""Smoke test of benchmarks/precision_agreement.py on tiny bundles: a bundle agrees with itself, scores are official."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import precision_agreement  # noqa: E402


def test_reference_agrees_with_itself_and_int8_is_scored(tiny_bundles, tiny_squad, capsys):
    fp32 = str(tiny_bundles.bundle("bert"))
    int8 = str(tiny_bundles.bundle("bert", precision="int8"))
    assert precision_agreement.main([fp32, int8, "--data", str(tiny_squad), "--limit", "6"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["same_answer_as_first"] == rows[0]["questions"] == 6
    assert 0 <= rows[1]["same_answer_as_first"] <= 6 and 0 <= rows[1]["f1"] <= 100
