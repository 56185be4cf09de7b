"""Smoke test of benchmarks/ort_options_latency.py on a tiny bundle: both settings answer every question, in
alternating order, with the same answers, and the ratio is the ratio of the means."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ort_options_latency  # noqa: E402


def test_alternating_pairs_and_same_answers(tiny_bundles, tiny_squad, tmp_path, capsys):
    bundle = str(tiny_bundles.bundle("bert"))
    out = tmp_path / "r.json"
    assert ort_options_latency.main([bundle, "--data", str(tiny_squad), "--limit", "5", "--warmup", "1",
                                     "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["questions"] == 5 and result["answers_that_differ"] == 0
    off, on = result["mean_ms"]["mem_pattern=False"], result["mean_ms"]["mem_pattern=True"]
    assert result["speedup_of_on"]["ratio"] == pytest.approx(off / on)
    assert "mem_pattern=True is" in capsys.readouterr().out


def test_order_alternates_between_questions():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def ask(self, question, context, policy):
            calls.append((self.name, question, policy))

            class A:
                text = question
            return A()

    ms, answers = ort_options_latency.time_pair({"a": Fake("a"), "b": Fake("b")}, [("q0", "c"), ("q1", "c")], "none")
    assert [c[:2] for c in calls] == [("a", "q0"), ("b", "q0"), ("b", "q1"), ("a", "q1")]
    assert len(ms["a"]) == len(ms["b"]) == 2 and answers["a"] == answers["b"] == ["q0", "q1"]


def test_an_existing_out_is_refused_before_any_timing(tiny_bundles, tiny_squad, tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("mine")
    argv = [str(tiny_bundles.bundle("bert")), "--data", str(tiny_squad), "--limit", "2", "--warmup", "0", "--out", str(out)]
    with pytest.raises(SystemExit) as err:
        ort_options_latency.main(argv)
    assert err.value.code == 2 and "--overwrite" in capsys.readouterr().err and out.read_text() == "mine"
    assert ort_options_latency.main(argv + ["--overwrite"]) == 0 and json.loads(out.read_text())["questions"] == 2
