"""Smoke test of benchmarks/gpu_train_check.py: without a GPU it says so and exits 3; with one it reports."""

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_train_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check runs instead")
def test_without_a_gpu_it_exits_3_with_one_line(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert gpu_train_check.main(["--steps", "2", "--out", str(out)]) == gpu_train_check.EXIT_NO_GPU
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU here" in err[0]
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")
def test_on_a_gpu_it_reports_rate_and_memory(tmp_path, tiny_squad, wordpiece_tokenizer):
    tok = tmp_path / "tokenizer.json"
    wordpiece_tokenizer.save(str(tok))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{ROOT / "tests/fixtures/tiny-bert.json"}"\ntokenizer = "{tok}"\n'
                      f'train_files = ["{tiny_squad}"]\nmax_seq_length = 48\ndoc_stride = 8\nmax_query_length = 12\n'
                      f'batch_size = 4\n')
    out = tmp_path / "report.json"
    assert gpu_train_check.main(["--recipe", str(recipe), "--steps", "3", "--warmup", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["samples_per_s"] > 0 and report["peak_gpu_mb"] > 0


def test_an_existing_out_is_refused_before_anything_else(tmp_path, capsys):
    out = tmp_path / "report.json"
    out.write_text("mine")
    with pytest.raises(SystemExit) as err:
        gpu_train_check.main(["--steps", "2", "--out", str(out)])
    assert err.value.code == 2 and "--overwrite" in capsys.readouterr().err and out.read_text() == "mine"
