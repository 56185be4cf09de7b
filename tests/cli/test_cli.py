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
    assert 0 <= last["null_auc"] <= 100
    assert last["HasAns_span_f1"] >= last["HasAns_f1"], "a no-answer verdict can only lose span F1"
    stored = json.loads((model / "eval_results.json").read_text())["exits"][-1]
    assert scores["f1"] == pytest.approx(stored["f1"]), "predict reproduces the score found at training time"


def test_demo_shows_every_exit(trained):
    model, _ = trained
    out = elma("demo", "--model", model, "--question", "who crossed the river", "--context",
               "the old king crossed the river near the bridge.").stdout
    assert [line.split(":")[0] for line in out.splitlines()[1:-1]] == ["exit 1", "exit 2", "exit 3"]
    assert out.splitlines()[-1].startswith("policy none (no calibrated default): stops after exit 3 of 3: "), \
        "a model without a calibrated default runs full depth, and says so"


@pytest.mark.parametrize("args, message, code", [
    (["predict", "no-such-model", "DATA", "-o", "OUT"], "no such model folder", 3),
    (["predict", "MODEL", "DATA", "-o", "OUT", "--exit-layer", "9"], "--exit-layer must be in 1..3", 2),
    (["evaluate", "NOT_SQUAD", "OUT"], "missing key 'data'", 2),
    (["train", "MODEL", "--train-file", "DATA", "-o", "RUN", "--doc-stride", "999"], "doc_stride", 2),
])
def test_bad_input_is_one_line_and_nothing_written(trained, tmp_path, args, message, code):
    model, data = trained
    not_squad = tmp_path / "x.json"
    not_squad.write_text('{"hello": 1}')
    subst = {"MODEL": model, "DATA": data, "OUT": tmp_path / "out.json", "NOT_SQUAD": not_squad,
             "RUN": tmp_path / "run"}
    proc = elma(*[subst.get(a, a) for a in args], check=False)
    assert proc.returncode == code, "2: bad arguments or input data; 3: a model that cannot be used"
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.json").exists()


def test_evaluate_cli_prints_the_official_numbers(tmp_path):
    # q1 gold "Denver Broncos" / pred "Broncos": P=1, R=1/2, F1=2/3, exact 0
    # q2 unanswerable, pred ""        -> exact 1, f1 1
    # q3 unanswerable, pred "Paris"   -> exact 0, f1 0
    # q4 gold "1905", pred "1905"     -> exact 1, f1 1
    # exact = 2/4 = 50; f1 = (2/3 + 1 + 0 + 1)/4 = 66.67
    # best_f1 walk, na-probs q1 .1, q4 .2, q2 .3, q3 .9; start = #no-answer = 2:
    #   q1 +2/3 -> 2.67 (best, t=.1) | q4 +1 -> 3.67 (best, t=.2) | q2 +0 | q3 (pred "Paris") -1 -> 2.67
    #   best_f1 = 100 * 3.667 / 4 = 91.67 at threshold 0.2
    ctx = "The Denver Broncos won in 1905 in Paris."
    qas = [("q1", ["Denver Broncos"]), ("q2", []), ("q3", []), ("q4", ["1905"])]
    data = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": [
        {"id": q, "question": "?", "is_impossible": not a,
         "answers": [{"text": t, "answer_start": ctx.index(t)} for t in a]} for q, a in qas]}]}]}
    files = {"data.json": data, "pred.json": {"q1": "Broncos", "q2": "", "q3": "Paris", "q4": "1905"},
             "na.json": {"q1": 0.1, "q2": 0.3, "q3": 0.9, "q4": 0.2}}
    for name, obj in files.items():
        (tmp_path / name).write_text(json.dumps(obj))
    out = json.loads(elma("evaluate", tmp_path / "data.json", tmp_path / "pred.json", "--na-probs",
                          tmp_path / "na.json").stdout)
    assert out["exact"] == pytest.approx(50.0) and out["f1"] == pytest.approx(100 * (8 / 3) / 4)
    assert out["HasAns_f1"] == pytest.approx(100 * (5 / 3) / 2) and out["NoAns_exact"] == pytest.approx(50.0)
    assert out["best_f1"] == pytest.approx(100 * (11 / 3) / 4) and out["best_f1_thresh"] == 0.2
    assert out["total"] == 4


def test_convert_to_fp16_halves_the_weights_and_keeps_the_answers(trained, tmp_path):
    model, data = trained
    elma("convert", model, "-o", tmp_path / "fp16", "--dtype", "float16")
    assert (tmp_path / "fp16" / "model.safetensors").stat().st_size < 0.55 * (model / "model.safetensors").stat().st_size
    elma("predict", model, data, "-o", tmp_path / "a.json")
    elma("predict", tmp_path / "fp16", data, "-o", tmp_path / "b.json")
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert sum(a[q] == b[q] for q in a) >= 0.9 * len(a)
