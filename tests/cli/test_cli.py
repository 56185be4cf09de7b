"""The `elma` command as a user runs it: predict -> evaluate agree, bad input is one line and exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
from conftest import make_wordpiece_tokenizer, squad_payload  # noqa: E402

from elma.train.trainer import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def elma(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "elma.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "squad.json"
    data.write_text(json.dumps(squad_payload(copies=4)))
    tok = root / "tokenizer.json"
    make_wordpiece_tokenizer().save(str(tok))
    train(TrainConfig(model=str(ROOT / "tests/fixtures/tiny-bert.json"), tokenizer=str(tok), train_files=(str(data),),
                      output_dir=str(root / "model"), eval_file=str(data), max_seq_length=48, doc_stride=8,
                      max_query_length=12, batch_size=4, learning_rate=3e-3, max_steps=30, save_every=100, seed=0,
                      threads=1))
    return root / "model", data


def test_predict_then_evaluate_gives_the_calibrated_scores(trained, tmp_path):
    model, data = trained
    preds, na, exits = tmp_path / "p.json", tmp_path / "na.json", tmp_path / "exits.json"
    elma("predict", model, data, "-o", preds, "--na-probs-out", na, "--all-exits-out", exits)
    p, n = json.loads(preds.read_text()), json.loads(na.read_text())
    assert len(p) == len(n) == 24
    assert all(0 <= v <= 1 for v in n.values())
    assert all((p[q] == "") == (n[q] > 0.5) for q in p), "no-answer exactly when the na-prob is above 1/2"
    scores = json.loads(elma("evaluate", data, preds, "--na-probs", na).stdout)
    last = json.loads(exits.read_text())["exits"][-1]
    assert scores["total"] == 24 and scores["f1"] == pytest.approx(last["f1"])
    stored = json.loads((model / "eval_results.json").read_text())["exits"][-1]
    assert scores["f1"] == pytest.approx(stored["f1"]), "predict reproduces the score found at training time"


def test_demo_shows_every_exit(trained):
    model, _ = trained
    out = elma("demo", "--model", model, "--question", "who crossed the river", "--context",
               "the old king crossed the river near the bridge.").stdout
    assert [line.split(":")[0] for line in out.splitlines()[1:]] == ["exit 1", "exit 2", "exit 3"]


@pytest.mark.parametrize("args, message", [
    (["predict", "no-such-model", "DATA", "-o", "OUT"], "no such model folder"),
    (["predict", "MODEL", "DATA", "-o", "OUT", "--exit-layer", "9"], "--exit-layer must be in 1..3"),
    (["evaluate", "NOT_SQUAD", "OUT"], "missing key 'data'"),
    (["train", "MODEL", "--train-file", "DATA", "-o", "RUN", "--doc-stride", "999"], "doc_stride"),
])
def test_bad_input_is_one_line_and_nothing_written(trained, tmp_path, args, message):
    model, data = trained
    not_squad = tmp_path / "x.json"
    not_squad.write_text('{"hello": 1}')
    subst = {"MODEL": model, "DATA": data, "OUT": tmp_path / "out.json", "NOT_SQUAD": not_squad,
             "RUN": tmp_path / "run"}
    proc = elma(*[subst.get(a, a) for a in args], check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.json").exists()
