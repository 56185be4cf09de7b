"""Smoke test of benchmarks/offload_stats.py on a tiny bundle: every question offloaded with a never-confident
policy, none with static:1; rates, F1s, bytes and latencies present."""

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import offload_stats  # noqa: E402
from conftest import squad_payload  # noqa: E402


def test_offload_stats_short_run(tiny_bundles, tmp_path, capsys):
    bundle = str(tiny_bundles.bundle("bert"))
    data = tmp_path / "d.json"
    data.write_text(json.dumps(squad_payload(copies=1)))
    assert offload_stats.main(["--device-model", bundle, "--policy", "maxprob:1", "--data", str(data), "--max-questions",
                               "4", "--deadline-ms", "5000", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["questions"] == 4 and s["offload_rate"] == 1.0 and s["offloaded_rate"] + s["deferred_rate"] == 1.0
    assert s["bytes_sent_per_question"] > 100 and s["latency_ms_p50"] <= s["latency_ms_p99"]
    assert 0 <= s["f1_local_all"] <= 100 and 0 <= s["f1_final_all"] <= 100
    stats = offload_stats.collect(bundle, "static:1", str(data), max_questions=2)
    assert stats.offload_rate == 0.0 and stats.bytes_sent_per_question == 0 and math.isnan(stats.f1_server_offloaded)
