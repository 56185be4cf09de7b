"""Smoke test of benchmarks/exit_table.py: one row per exit, values formatted, missing keys shown as '-'."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import exit_table  # noqa: E402


def test_one_row_per_exit(tmp_path, capsys):
    rows = [{"exit_layer": 1, "exact": 50.0, "f1": 61.234, "total": 4, "HasAns_exact": 40.0, "HasAns_f1": 55.5,
             "null_threshold": -1.5},
            {"exit_layer": 2, "exact": 60.0, "f1": 70.0, "total": 4, "NoAns_f1": 80.0, "null_threshold": 0.25}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"exits": rows}))
    exit_table.main([str(path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| 1 | 50.00 | 61.23 |") and "| - |" in lines[2]
    assert "| 80.00 | - | - | 0.250 | 4 |" in lines[3], "span F1 and null AUC show '-' where a file lacks them"
