"""benchmarks/train_compile.py: eager against torch.compile, side by side. The run itself is slow (inductor
compiles C++), so it is marked slow; the output rule is checked here fast."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import train_compile  # noqa: E402


def test_a_taken_out_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("mine")
    with pytest.raises(SystemExit) as exc:
        train_compile.main(["--model", "no-such-model", "--data", str(tmp_path / "none.json"), "--out", str(out)])
    assert exc.value.code == 2 and out.read_text() == "mine"
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_both_copies_train_on_the_same_batches_and_the_report_says_which_is_faster(tmp_path, tiny_squad,
                                                                                   wordpiece_tokenizer):
    tok = tmp_path / "tokenizer.json"
    wordpiece_tokenizer.save(str(tok))
    out = tmp_path / "r.json"
    assert train_compile.main(["--model", str(ROOT / "tests/fixtures/tiny-bert.json"), "--tokenizer", str(tok),
                               "--data", str(tiny_squad), "--steps", "3", "--warmup", "1", "--batch-size", "4",
                               "--max-seq-length", "48", "--doc-stride", "8", "--max-query-length", "12",
                               "--threads", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert len(r["step_s"]["eager"]) == len(r["step_s"]["compiled"]) == 3
    lo, hi = r["compiled_speedup_ci95"]
    assert lo <= r["compiled_speedup"] <= hi
    assert r["max_relative_loss_gap"] < 0.05, "the same model on the same batches: nearly the same loss"
