"""Smoke test of benchmarks/record_memory.py on a tiny bundle: both modes run in their own process and report
their peak memory and what they keep (no figure is asserted)."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import record_memory  # noqa: E402


def test_both_modes_report_their_peak(tiny_bundles, tiny_squad, capsys, monkeypatch):
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", str(root))
    assert record_memory.main([str(tiny_bundles.bundle("bert")), "--data", str(tiny_squad), "--limit", "5",
                               "--batch", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"batched", "streamed"}
    for r in out.values():
        assert r["questions"] == 5 and r["peak_rss_end_mib"] >= r["peak_rss_loaded_mib"] > 0 and r["kept_bytes"] > 0
    assert out["batched"]["batch"] == 4 and out["streamed"]["batch"] == 1
