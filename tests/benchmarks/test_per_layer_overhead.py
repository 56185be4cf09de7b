"""Smoke test of benchmarks/per_layer_overhead.py on a tiny bundle (a few repeats; no timing is asserted)."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import per_layer_overhead  # noqa: E402


def test_reports_fused_chain_and_decision_times(tiny_bundles, capsys):
    assert per_layer_overhead.main([str(tiny_bundles.bundle("bert")), "--repeats", "3", "--warmup", "1", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_layers"] == 3 and report["repeats"] == 3 and report["allow_spinning"] is False
    assert report["fused_ms"] > 0 and report["chain_ms"] > 0 and report["decision_ms"] > 0
    assert report["chain_over_fused"] == pytest.approx(report["chain_ms"] / report["fused_ms"])
    assert report["full_depth_over_fused"] == pytest.approx(report["full_depth_chain_ms"] / report["fused_ms"])
    assert sorted(report["static_ms"]) == ["1", "2", "3"]


def test_sweep_reports_every_set_up(tiny_bundles, capsys, monkeypatch):
    monkeypatch.setattr(per_layer_overhead.os, "cpu_count", lambda: 1)
    assert per_layer_overhead.main([str(tiny_bundles.bundle("bert")), "--sweep", "--repeats", "2", "--warmup", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["intra_op_threads"], r["allow_spinning"]) for r in out["reports"]] == [(1, False), (1, True), (0, False), (0, True)]
    assert out["fastest_chain"]["chain_ms"] == min(r["chain_ms"] for r in out["reports"])
