"""Smoke tests of benchmarks/offload_faults.py and benchmarks/offload_matrix.py with a tiny bundle (slow: each starts
Ray Serve and PostgreSQL). ``ELMA_RAY_ADDRESS=auto`` runs them on a Ray already started."""

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("ray.serve", reason="Ray Serve (the serve extra) is not installed")
pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "offload"))

from pg_cluster import find_pg_bin  # noqa: E402

RAY = ["--ray-address", os.environ["ELMA_RAY_ADDRESS"]] if os.environ.get("ELMA_RAY_ADDRESS") else []


@pytest.mark.slow
def test_fault_runs_lose_no_acknowledged_record(tiny_bundles, tmp_path):
    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL binaries (pip install pgserver)")
    import offload_faults

    out = tmp_path / "faults.json"
    code = offload_faults.main(["--model", str(tiny_bundles.bundle("bert")), "--out", str(out), "--load-s", "2",
                                "--overload-clients", "32", "--max-queued-requests", "2", *RAY])
    result = json.loads(out.read_text())
    assert code == 0 and result["ok"], result
    assert result["overload"]["statuses"].get("503", 0) > 0  # the overload really refused some
    for fault in ("kill_model_replica", "kill_ingress_replica", "postgres_restart"):
        assert result[fault]["acknowledged_records"] > 0 and result[fault]["acknowledged_lost"] == 0, result[fault]


@pytest.mark.slow
def test_matrix_smoke_writes_one_table(tiny_bundles, tmp_path):
    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL binaries (pip install pgserver)")
    import offload_matrix

    out = tmp_path / "matrix"
    assert offload_matrix.main(["--model", str(tiny_bundles.bundle("bert")), "--out", str(out), "--smoke",
                                "--requests", "8", "--concurrency", "1", "4", *RAY]) == 0
    rows = json.loads((tmp_path / "matrix.json").read_text())["rows"]
    assert [(r["engine"], r["concurrency"]) for r in rows] == [("uvicorn", 1), ("uvicorn", 4),
                                                               ("ray 1 replica, batching on", 1), ("ray 1 replica, batching on", 4)]
    assert all(r["ok"] == 8 for r in rows)
    assert "| ray 1 replica, batching on | 4 |" in (tmp_path / "matrix.md").read_text()
    assert offload_matrix.main(["--model", "x", "--out", str(out)]) == 2  # no overwrite without --overwrite
