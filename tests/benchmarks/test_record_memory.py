"""Smoke test of benchmarks/record_memory.py on a tiny bundle: each mode runs in its own process and reports its
peak memory (no figure is asserted)."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import record_memory  # noqa: E402


@pytest.fixture
def child_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))


def test_both_record_modes_report_their_peak(tiny_bundles, tiny_squad, capsys, child_path):
    assert record_memory.main(["record", str(tiny_bundles.bundle("bert")), "--data", str(tiny_squad), "--limit", "5",
                               "--batch", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"batched", "streamed"}
    for r in out.values():
        assert r["questions"] == 5 and r["peak_rss_end_mib"] >= r["peak_rss_loaded_mib"] > 0 and r["kept_bytes"] > 0
    assert out["batched"]["batch"] == 4 and out["streamed"]["batch"] == 1


def test_bench_mode_runs_elma_bench_per_limit_and_stamps_its_stages(tiny_bundles, tiny_squad, capsys, child_path,
                                                                     tmp_path):
    out_file = tmp_path / "memory.json"
    assert record_memory.main(["bench", "--limits", "2", "4", "--out", str(out_file), "--",
                               str(tiny_bundles.bundle("bert")), "--data", str(tiny_squad), "--policy", "static:1",
                               "--sweep", "--warmup", "0", "--bootstrap", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert json.loads(out_file.read_text()) == out
    assert [r["questions"] for r in out["runs"]] == [2, 4]
    for r in out["runs"]:
        assert r["exit_status"] == 0 and r["command"].endswith(f"--limit {r['questions']}")
        assert r["peak_rss_mib"] >= r["sampled_peak_rss_mib"] * 0.9 > 0 and r["sweep_record_bytes"] > 0 and r["timeline"]
        stages = [s["stage"] for s in r["stages"]]
        assert stages[0] == "start" and stages[-1] == "end"
        assert any(s.startswith("recording every exit") for s in stages), stages
        assert all(s["peak_so_far_mib"] >= s["rss_mib"] > 0 for s in r["stages"])


def test_lengths_mode_runs_every_allocator_setting_in_its_own_child(tiny_bundles, capsys, child_path):
    assert record_memory.main(["lengths", str(tiny_bundles.bundle("bert")), "--shortest", "4", "--step", "3",
                               "--passes", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["setting"] for r in out["runs"]] == list(record_memory.LENGTH_SETTINGS)
    assert [r["mem_pattern"] for r in out["runs"]] == [True, False, False, False]
    assert [r["arena_extend"] for r in out["runs"]][2] == "same_as_requested"  # the child ran what it was asked
    assert [r["shared_arena"] for r in out["runs"]] == [True, True, True, False]
    for r in out["runs"]:
        assert r["shapes"] >= 2 and r["rss_after_pass_3_mib"] > 0 and r["rss_after_first_run_mib"] > 0


def test_bench_mode_needs_the_elma_bench_arguments():
    with pytest.raises(SystemExit) as exc:
        record_memory.main(["bench", "--limits", "2"])
    assert exc.value.code == 2
