"""Smoke test of benchmarks/offload_load.py: a short run against an in-process server with a tiny bundle,
percentiles by nearest rank, loopback only."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import offload_load  # noqa: E402


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert offload_load.percentile_ms(values, 99) == 99.0 and offload_load.percentile_ms(values, 50) == 50.0
    assert offload_load.percentile_ms([5.0], 99) == 5.0


def test_loopback_only_and_bounds():
    with pytest.raises(ValueError, match="loopback only"):
        offload_load.run_load("http://10.0.0.2:8000", "t", 10, 1, 1.0)
    with pytest.raises(ValueError, match="requests must be"):
        offload_load.run_load("http://127.0.0.1:8000", "t", 0, 1, 1.0)


def test_short_run_in_process(tiny_bundles, capsys):
    bundle = tiny_bundles.bundle("bert")
    assert offload_load.main(["--model", str(bundle), "--requests", "12", "--concurrency", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["requests"] == 12 and result["ok"] == 12 and result["errors"] == {} and result["server"] == "in-process"
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"] and result["requests_per_s"] > 0
