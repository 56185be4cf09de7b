"""Smoke tests of benchmarks/gpu_check.sh and gpu_compare.py where there is no GPU: the script's syntax, its clear
exit when TensorRT is missing (a stand-in tensorrt that fails to import, so the result does not depend on this
machine), its argument checks; gpu_compare's two parts on a tiny bundle with onnxruntime on both sides."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_compare  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(args, tmp_path, **env):
    stub = tmp_path / "stubs" / "tensorrt"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text("raise ImportError('stand-in: no TensorRT on this machine')\n")
    environ = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "stubs"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=environ)


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_without_tensorrt_it_exits_3_saying_what_is_missing(tmp_path, tiny_squad):
    out = tmp_path / "out"
    proc = run(["--data", str(tiny_squad), "--out", str(out), "--questions", "5"], tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "cannot run the TensorRT check" in proc.stderr and "MISSING tensorrt" in proc.stderr
    assert "fix: TensorRT comes with JetPack" in proc.stderr
    assert not out.exists(), "nothing written when the check cannot run"


def test_bad_arguments_exit_2_and_an_existing_output_is_kept(tmp_path, tiny_squad):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = run(["--data", str(tiny_squad), "--out", str(out)], tmp_path)
    assert proc.returncode == 2 and "exists" in proc.stderr and (out / "mine.txt").read_text() == "keep"
    assert run(["--questions", "0", "--data", str(tiny_squad)], tmp_path).returncode == 2
    assert run(["--data", str(tmp_path / "none.json")], tmp_path).returncode == 2
    assert run(["--bundle", str(tmp_path), "--data", str(tiny_squad)], tmp_path).returncode == 2


def test_compare_agrees_with_itself(tiny_bundles, tiny_squad, capsys):
    pytest.importorskip("onnxruntime")
    bundle = str(tiny_bundles.bundle("bert"))
    code = gpu_compare.main([bundle, "--data", str(tiny_squad), "--limit", "4", "--backend", "onnxruntime",
                             "--repeats", "0"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["answers"]["none"]["same_text"] == 4 and report["max_abs_last_exit_logit_diff"] == 0.0
    assert "latency" not in report


def test_chain_vs_fused_times_both_and_checks_they_agree(tiny_bundles):
    ort = pytest.importorskip("onnxruntime")
    from elma.runtime.engine import Runtime

    with Runtime.open(tiny_bundles.bundle("bert")) as rt:
        fused = ort.InferenceSession(str(rt.backend.bundle.fused), providers=["CPUExecutionProvider"])

        def run_fused(ids, mask, types):  # what the tensorrt backend does with fused.plan
            start, end = fused.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
            return np.asarray(start), np.asarray(end)

        rt.backend.run_fused = run_fused
        report = gpu_compare.chain_vs_fused(rt, "who is the king", "the king was rollo of normandy", repeats=3, warmup=1)
    assert report["repeats"] == 3 and report["chain_ms"] > 0 and report["fused_ms"] > 0
    assert report["max_abs_logit_diff_chain_vs_fused"] < 1e-3
