"""Smoke test of benchmarks/update_time.py: one install of a tiny bundle on loopback; the bytes received are the
bundle plus its metadata, and an up-to-date poll fetches metadata only."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
pytest.importorskip("nacl")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import update_time  # noqa: E402


def test_one_install_of_a_tiny_bundle(tiny_bundles, capsys):
    bundle = tiny_bundles.bundle("bert")
    assert update_time.main([str(bundle), "--repeat", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    assert r["bundle_bytes"] == size and r["installs"] == 1
    assert 0 < r["overhead_bytes"] < 50_000 and r["bytes_received"] == size + r["overhead_bytes"]
    assert set(r["step_s"]) == {"trust", "check", "download+verify", "stage", "health", "swap"}
    assert 0 < r["up_to_date_bytes"] < 50_000 and r["update_s_min"] <= r["update_s_median"] <= r["update_s_max"]


def test_bad_repeat_is_exit_2(tiny_bundles, capsys):
    assert update_time.main([str(tiny_bundles.bundle("bert")), "--repeat", "0"]) == 2
    assert "--repeat" in capsys.readouterr().err
