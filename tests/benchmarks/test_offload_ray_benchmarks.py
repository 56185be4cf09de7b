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
    engines = ["uvicorn", "ray 1 replica, batching on", "ray combined 1 replica, batching on"]
    assert [(r["engine"], r["concurrency"]) for r in rows] == [(e, c) for e in engines for c in (1, 4)]
    assert all(r["ok"] == 8 for r in rows)
    table = (tmp_path / "matrix.md").read_text()
    assert "| ray 1 replica, batching on | 4 |" in table and "| ray combined 1 replica, batching on | 4 |" in table
    assert offload_matrix.main(["--model", "x", "--out", str(out)]) == 2  # no overwrite without --overwrite


def test_matrix_runs_both_topologies_and_filters_by_name(tmp_path, capsys):
    import signal

    import offload_matrix

    out = tmp_path / "matrix"
    handler = signal.getsignal(signal.SIGTERM)
    assert offload_matrix.main(["--model", "x", "--out", str(out), "--only", "ray 3 replicas"]) == 2
    assert "matches no configuration" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert signal.getsignal(signal.SIGTERM) is handler  # pytest's own SIGTERM handling is left as it was

    names = [e.name for e in offload_matrix.engines(2)]
    assert len(names) == 9 and names[0] == "uvicorn"
    assert "ray 2 replicas, batching on" in names and "ray combined 2 replicas, batching off" in names
    combined = [e for e in offload_matrix.engines(2) if "combined" in e.name]
    assert all(e.flags[e.flags.index("--ray-topology") + 1] == "combined" for e in combined) and len(combined) == 4
    two = next(e for e in combined if e.name == "ray combined 2 replicas, batching on")
    assert two.flags[two.flags.index("--intra-op-threads") + 1] == "1" and "--no-batching" not in two.flags


@pytest.mark.slow
def test_profile_smoke_splits_a_request_into_stages(tiny_bundles, tmp_path):
    import signal

    import offload_profile

    out = tmp_path / "profile"
    handler = signal.getsignal(signal.SIGTERM)
    assert offload_profile.main(["--model", str(tiny_bundles.bundle("bert")), "--out", str(out), "--smoke", *RAY]) == 0
    stages = json.loads((tmp_path / "profile.json").read_text())["stages"]
    by_server: dict = {}
    for s in stages:
        by_server.setdefault(s["server"], {})[s["stage"]] = s["median_ms"]
    assert set(by_server) == {"uvicorn", "ray split", "ray combined"}
    assert set(by_server["uvicorn"]) == {"other", "runtime", "total"}
    for server in ("ray split", "ray combined"):
        got = by_server[server]
        assert set(got) == {"proxy", "app", "model", "runtime", "total"}
        assert got["runtime"] > 0 and got["proxy"] > 0 and got["app"] >= 0 and got["model"] >= 0, got
    assert "| ray combined | runtime |" in (tmp_path / "profile.md").read_text()
    assert signal.getsignal(signal.SIGTERM) is handler
    assert offload_profile.main(["--model", "x", "--out", str(out)]) == 2  # no overwrite without --overwrite


def test_profile_stages_add_up_to_the_total():
    import offload_profile

    got = offload_profile.stages_ms(20.0, "app;dur=12, model;dur=9", 6.5)
    assert got == {"total": 20.0, "proxy": 8.0, "app": 3.0, "model": 2.5, "runtime": 6.5}
    assert offload_profile.stages_ms(10.0, None, 7.0) == {"total": 10.0, "other": 3.0, "runtime": 7.0}
    summary = offload_profile.summarize("ray combined", [got, {**got, "total": 30.0, "proxy": 18.0}])
    assert [s["stage"] for s in summary] == ["proxy", "app", "model", "runtime", "total"]
    assert summary[-1]["median_ms"] == 25.0 and summary[0]["p90_ms"] == 18.0


def test_write_pair_leaves_both_outputs_and_no_temporary_file(tmp_path):
    from offload_faults import write_pair

    out_json, out_md = tmp_path / "r" / "m.json", tmp_path / "r" / "m.md"
    write_pair(out_json, out_md, {"rows": [1, 2]}, ["| a |", "|---|"])
    assert json.loads(out_json.read_text()) == {"rows": [1, 2]} and out_md.read_text() == "| a |\n|---|\n"
    assert sorted(p.name for p in out_json.parent.iterdir()) == ["m.json", "m.md"]
