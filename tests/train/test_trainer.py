"""`elma train`: it learns, it checkpoints atomically, and a killed run resumes to the same end."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from elma.errors import ElmaError  # noqa: E402
from elma.model.multi_exit import MultiExitQA  # noqa: E402
from elma.train.trainer import CHECKPOINT_NAME, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tiny_train_config):
    return tiny_train_config(warmup_ratio=0.1, max_steps=60, save_every=2, log_every=10)


def test_training_lowers_the_loss_and_writes_a_loadable_model(config, tiny_squad):
    config = replace(config, eval_file=str(tiny_squad))
    result = train(config)
    assert result.steps == 60
    assert sum(result.losses[-10:]) / 10 < 0.6 * sum(result.losses[:10]) / 10
    out = Path(config.output_dir)
    model = MultiExitQA.from_pretrained(out)
    assert len(model.exit_config.null_thresholds) == model.num_exits, "calibrated thresholds are stored"
    evals = json.loads((out / "eval_results.json").read_text())["exits"]
    assert [e["exit_layer"] for e in evals] == [1, 2, 3]
    assert all(e["total"] == 24 and 0 <= e["f1"] <= 100 for e in evals)
    assert not list(out.glob(".*")), "no temporary file is left behind"


def test_existing_checkpoint_needs_resume(config):
    train(replace(config, max_steps=2))
    with pytest.raises(ElmaError, match="--resume"):
        train(replace(config, max_steps=2))
    with pytest.raises(ElmaError, match="other settings"):
        train(replace(config, max_steps=3), resume=True)


def test_killed_run_resumes_to_the_uninterrupted_end(config, tmp_path):
    reference = train(replace(config, output_dir=str(tmp_path / "ref")))
    run_dir = Path(config.output_dir)
    cmd = [sys.executable, "-m", "elma.cli", "train", config.model, "--tokenizer", config.tokenizer,
           "--train-file", *config.train_files, "-o", str(run_dir)]
    for field in ("max_seq_length", "doc_stride", "max_query_length", "batch_size", "learning_rate", "warmup_ratio",
                  "max_steps", "save_every", "log_every", "seed", "threads"):
        cmd += [f"--{field.replace('_', '-')}", str(getattr(config, field))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run_dir / CHECKPOINT_NAME).exists():
        assert proc.poll() is None, "the training process ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run_dir / CHECKPOINT_NAME, weights_only=False)["step"]
    assert 0 < killed_at < config.max_steps, "the kill landed mid-run"

    resumed = train(config, resume=True)
    assert resumed.first_step == killed_at and resumed.steps == reference.steps
    assert resumed.losses == pytest.approx(reference.losses[killed_at:], abs=1e-4)
    a = MultiExitQA.from_pretrained(run_dir).state_dict()
    b = MultiExitQA.from_pretrained(tmp_path / "ref").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_two_stage_trains_only_the_earlier_heads(config):
    first = Path(config.output_dir)
    train(replace(config, max_steps=3))
    before = MultiExitQA.from_pretrained(first).state_dict()
    second = replace(config, model=str(first), tokenizer=None, output_dir=str(first.parent / "stage2"),
                     two_stage=True, max_steps=5)
    train(second)
    after = MultiExitQA.from_pretrained(second.output_dir).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("exits.") for k in changed), "the encoder is frozen"
    assert not any(k.startswith("exits.2.") for k in changed), "the last head is frozen"
    assert any(k.startswith("exits.0.") for k in changed)


def test_answerability_heads_train_save_and_reload(config):
    """--answerability-head: new weights per exit that train, save and load back, and move the null score."""
    train(replace(config, answerability_head=True, max_steps=4))
    model = MultiExitQA.from_pretrained(config.output_dir)
    assert model.exit_config.answerability_head and len(model.null_heads) == model.num_exits
    state = model.state_dict()
    assert any(state[f"null_heads.{i}.bias"].abs().item() > 0 for i in range(model.num_exits)), "the heads trained"
    ids = torch.tensor([[2, 40, 41, 3, 50, 51, 52, 3]])
    mask, types = torch.ones_like(ids), torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        out = model.all_exits(ids, mask, types)
        model.null_heads = None  # the same encoder without the heads: only CLS's logits change, by the null logit
        bare = model.all_exits(ids, mask, types)
    assert torch.allclose(out.start[:, :, 0], bare.start[:, :, 0] + out.null, atol=1e-6)
    assert torch.equal(out.start[:, :, 1:], bare.start[:, :, 1:]) and torch.equal(out.end[:, :, 1:], bare.end[:, :, 1:])


def test_frozen_word_embeddings_stay_put_and_the_rest_trains(config):
    first = Path(config.output_dir)
    train(replace(config, max_steps=1))
    before = MultiExitQA.from_pretrained(first).state_dict()
    second = replace(config, model=str(first), tokenizer=None, output_dir=str(first.parent / "frozen"),
                     freeze_word_embeddings=True, max_steps=3)
    train(second)
    after = MultiExitQA.from_pretrained(second.output_dir).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "encoder.embeddings.word_embeddings.weight" not in changed
    assert "encoder.embeddings.position_embeddings.weight" in changed and any(k.startswith("exits.") for k in changed)


def test_answerability_head_on_a_model_without_one_is_refused(config):
    first = Path(config.output_dir)
    train(replace(config, max_steps=1))
    with pytest.raises(ElmaError, match="no answerability heads"):
        train(replace(config, model=str(first), tokenizer=None, output_dir=str(first.parent / "b"),
                      answerability_head=True, max_steps=1))
    assert not (first.parent / "b" / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("bad", ["linear2", "1,-1,1", "0,0,0", "a,b,c"])
def test_bad_exit_weights_are_refused_in_the_config(config, bad):
    with pytest.raises(ValueError, match="exit weights"):
        replace(config, exit_weights=bad)


def test_exit_weights_for_another_depth_are_refused_before_training(config):
    with pytest.raises(ElmaError, match="2 values for 3 exits"):
        train(replace(config, exit_weights="1,2"))
    assert not (Path(config.output_dir) / CHECKPOINT_NAME).exists()
