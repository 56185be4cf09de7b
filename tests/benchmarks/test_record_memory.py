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
        assert 0 < r["sampled_peak_anon_mib"] <= r["sampled_peak_rss_mib"]  # resident = anonymous + file-backed
        assert 0 < r["file_backed_at_sampled_peak_mib"] < r["sampled_peak_rss_mib"]
        assert all(0 < anon <= rss for _, rss, anon, _ in r["timeline"])
        if r["sampled_peak_pss_mib"] is not None:  # a kernel with smaps_rollup
            assert r["sampled_peak_anon_mib"] * 0.9 < r["sampled_peak_pss_mib"] <= r["sampled_peak_rss_mib"] * 1.05
            assert all(s["pss_mib"] > 0 for s in r["stages"])
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


def test_resident_memory_splits_into_file_backed_and_anonymous(tmp_path):
    """A mapped file read through counts as file-backed, a filled buffer as anonymous (the split the bench mode
    reports: the bundles' mapped weight files are clean pages the kernel can drop)."""
    import mmap

    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * (32 << 20))
    rss0, file0 = record_memory._resident_mib()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert sum(m[i] for i in range(0, len(m), 4096)) == len(m) // 4096  # touch every page
        rss1, file1 = record_memory._resident_mib()
    buffer = bytearray(b"\2" * (32 << 20))
    rss2, file2 = record_memory._resident_mib()
    assert file1 - file0 > 24 and (rss1 - file1) - (rss0 - file0) < 8  # the mapped file: file-backed
    assert (rss2 - file2) - (rss1 - file1) > 24 and len(buffer) == 32 << 20  # the buffer: anonymous


@pytest.mark.skipif(record_memory._pss_mib() is None, reason="this kernel has no /proc/self/smaps_rollup")
def test_proportional_memory_counts_a_file_mapped_twice_once(tmp_path):
    """Resident memory counts a page once per mapping (ONNX Runtime maps a bundle's weights for the per-layer
    sessions and again for the fused graph); the proportional set size counts it once."""
    import mmap

    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * (32 << 20))
    rss0, pss0 = record_memory._rss_mib(), record_memory._pss_mib()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as a, \
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as b:
        for m in (a, b):
            assert sum(m[i] for i in range(0, len(m), 4096)) == len(m) // 4096  # touch every page
        rss1, pss1 = record_memory._rss_mib(), record_memory._pss_mib()
    assert rss1 - rss0 > 56  # both mappings: 64 MiB resident
    assert 24 < pss1 - pss0 < 40  # one file of 32 MiB
