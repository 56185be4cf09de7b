"""Smoke test of benchmarks/train_throughput.py on a tiny model: it runs and reports every mode."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import train_throughput  # noqa: E402


def test_reports_every_mode_and_padding_share(tmp_path, tiny_squad, wordpiece_tokenizer):
    tok = tmp_path / "tokenizer.json"
    wordpiece_tokenizer.save(str(tok))
    out = tmp_path / "report.json"
    train_throughput.main(["--model", str(ROOT / "tests/fixtures/tiny-bert.json"), "--tokenizer", str(tok),
                           "--data", str(tiny_squad), "--steps", "2", "--batch-size", "4",
                           "--max-seq-length", "48", "--doc-stride", "8", "--max-query-length", "12", "--threads", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == [m[0] for m in train_throughput.MODES]
    assert rows[0]["speedup_vs_first"] == 1.0
    # padding every batch to max_seq_length wastes more than dynamic padding does
    assert rows[0]["padded_share"] > rows[1]["padded_share"]
    assert all(r["real_tokens_per_s"] > 0 for r in rows)


def test_compare_loops_runs_old_and_new_steps_to_identical_weights(tmp_path, tiny_squad, wordpiece_tokenizer):
    tok = tmp_path / "tokenizer.json"
    wordpiece_tokenizer.save(str(tok))
    out = tmp_path / "report.json"
    train_throughput.main(["--model", str(ROOT / "tests/fixtures/tiny-bert.json"), "--tokenizer", str(tok),
                           "--data", str(tiny_squad), "--steps", "3", "--batch-size", "4", "--max-seq-length", "48",
                           "--doc-stride", "8", "--max-query-length", "12", "--threads", "1", "--compare-loops",
                           "--bf16", "--out", str(out)])
    loops = json.loads(out.read_text())["loops"]
    assert loops["steps"] == 3 and loops["bf16"] is True
    assert loops["weights_bit_identical"] is True
    assert loops["old_real_tokens_per_s"] > 0 and loops["new_real_tokens_per_s"] > 0


def test_modes_picks_rows_and_the_report_has_peak_rss(tmp_path, tiny_squad, wordpiece_tokenizer):
    tok = tmp_path / "tokenizer.json"
    wordpiece_tokenizer.save(str(tok))
    out = tmp_path / "report.json"
    train_throughput.main(["--model", str(ROOT / "tests/fixtures/tiny-bert.json"), "--tokenizer", str(tok),
                           "--data", str(tiny_squad), "--steps", "1", "--batch-size", "4", "--max-seq-length", "48",
                           "--doc-stride", "8", "--max-query-length", "12", "--threads", "1", "--modes", "3",
                           "--out", str(out)])
    report = json.loads(out.read_text())
    assert [r["mode"] for r in report["rows"]] == [train_throughput.MODES[3][0]]
    assert report["peak_rss_mb"] > 10


def test_allocator_benchmark_runs_each_allocator_in_its_own_process(tmp_path, tiny_squad, wordpiece_tokenizer):
    import train_allocator

    tok = tmp_path / "tokenizer.json"
    wordpiece_tokenizer.save(str(tok))
    out = tmp_path / "alloc.json"
    train_allocator.main(["--model", str(ROOT / "tests/fixtures/tiny-bert.json"), "--data", str(tiny_squad),
                          "--steps", "1", "--threads", "1", "--rounds", "1",
                          "--allocators", "glibc,glibc-mmap-1MiB", "--out", str(out),
                          "--tokenizer", str(tok), "--batch-size", "4", "--max-seq-length", "48", "--doc-stride", "8",
                          "--max-query-length", "12"])
    rows = json.loads(out.read_text())["rows"]
    assert [r["allocator"] for r in rows] == ["glibc", "glibc-mmap-1MiB"]
    assert rows[0]["vs_first"] == 1.0 and all(0 < r["kernel_share"] < 1 and r["peak_rss_mb"] > 10 for r in rows)
    with pytest.raises(SystemExit, match="unknown allocator 'ptmalloc'"):
        train_allocator.main(["--model", "m", "--data", "d", "--allocators", "glibc,ptmalloc"])
