"""Smoke test of benchmarks/long_contexts.py on a tiny bundle: only questions with a long first window are written,
with their titles, and an existing output is refused."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import long_contexts  # noqa: E402

from elma.data.squad import load_squad  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402


def test_keeps_the_long_questions(tiny_bundles, tiny_squad, tmp_path, capsys):
    bundle = str(tiny_bundles.bundle("bert"))
    with Runtime.open(bundle, policy="none") as rt:
        lengths = {e.qid: len(rt.windows([(e.question, e.context)])[0]) for e in load_squad(tiny_squad)}
    cut = sorted(lengths.values())[len(lengths) // 2]
    out = tmp_path / "long.json"
    assert long_contexts.main([bundle, "--data", str(tiny_squad), "--min-tokens", str(cut), "-o", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    kept = load_squad(out)
    assert {e.qid for e in kept} == {q for q, n in lengths.items() if n >= cut} and report["kept"] == len(kept)
    assert 0 < len(kept) < len(lengths) and all(e.title == "tiny" for e in kept)
    with pytest.raises(SystemExit):
        long_contexts.main([bundle, "--data", str(tiny_squad), "--min-tokens", "1", "-o", str(out)])
