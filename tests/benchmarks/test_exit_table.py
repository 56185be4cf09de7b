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


def _scores(tmp_path, name, f1, auc, total=100):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"exits": [{"exit_layer": 1, "f1": 10.0, "null_auc": 50.0, "total": total},
                                          {"exit_layer": 2, "f1": f1, "null_auc": auc, "total": total}]}))
    return str(path)


def test_shipping_rule_needs_both_full_depth_f1_and_null_auc(tmp_path, capsys):
    base = _scores(tmp_path, "v2", 60.0, 75.0)
    assert exit_table.main([_scores(tmp_path, "better", 61.0, 75.0), "--against", base]) == 0
    assert "shipping rule holds: full depth f1 61.00 vs 60.00 (+1.00), null_auc 75.00 vs 75.00 (+0.00)" in \
        capsys.readouterr().out
    assert exit_table.main([_scores(tmp_path, "f1_only", 70.0, 74.9), "--against", base]) == 1, "a lower AUC fails"
    assert exit_table.main([_scores(tmp_path, "auc_only", 59.99, 90.0), "--against", base]) == 1, "a lower F1 fails"
    assert "does not hold" in capsys.readouterr().out
    assert exit_table.main([_scores(tmp_path, "other", 70.0, 90.0, total=99), "--against", base]) == 2
    assert "different question sets" in capsys.readouterr().err


def _phase(tmp_path, name, spans, total=50):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"exits": [{"exit_layer": i + 1, "HasAns_span_f1": f, "total": total}
                                          for i, f in enumerate(spans)]}))
    return str(path)


def test_phase_rule_keeps_distillation_only_for_better_early_exits_at_little_cost(tmp_path, capsys):
    p1 = _phase(tmp_path, "p1", [20, 30, 60, 70, 75, 76])
    assert exit_table.main([_phase(tmp_path, "a", [40, 50, 65, 72, 75, 75.5]), "--phase-rule", p1]) == 0
    assert "keep phase 2: full-depth span F1 75.50 vs 76.00 (-0.50)" in capsys.readouterr().out
    assert exit_table.main([_phase(tmp_path, "b", [40, 50, 65, 72, 75, 75.4]), "--phase-rule", p1]) == 1, \
        "more than 0.5 lost at full depth"
    assert exit_table.main([_phase(tmp_path, "c", [20, 30, 60, 72, 77, 78]), "--phase-rule", p1]) == 1, \
        "early exits no better"
    assert exit_table.main([_phase(tmp_path, "d", [40, 50, 65, 72, 75, 76], total=49), "--phase-rule", p1]) == 2


def test_unreadable_or_incomplete_scores_are_exit_2_not_a_rule_outcome(tmp_path, capsys):
    """The finish recipe reads exit 1 as "keep phase 1" / "rule does not hold": a broken file must not look like it."""
    good = _scores(tmp_path, "good", 60.0, 75.0)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    no_span = tmp_path / "no_span.json"  # no HasAns_span_f1, which the phase rule reads
    no_span.write_text(json.dumps({"exits": [{"f1": 1.0, "total": 100}] * 2}))
    cases = [[str(empty)], [str(garbled)], [str(tmp_path / "missing.json")], [good, "--against", str(empty)],
             [good, "--phase-rule", str(garbled)], [str(no_span), "--phase-rule", str(no_span)]]
    for argv in cases:
        assert exit_table.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("exit_table: ") and len(err.strip().splitlines()) == 1, err
