"""Weights-only snapshots (``elma snapshot``, ``elma train --resume-weights``): a run outlives the machine it trains
on when its checkpoint.pt is lost and only a committed snapshot is left."""

from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from elma.cli import main as elma_main  # noqa: E402
from elma.errors import UsageError  # noqa: E402
from elma.model.multi_exit import MultiExitQA  # noqa: E402
from elma.train import checkpoint, trainer  # noqa: E402
from elma.train.trainer import CHECKPOINT_NAME, train  # noqa: E402


@pytest.fixture
def config(tiny_train_config):
    return tiny_train_config(max_steps=8, save_every=3, log_every=4, warmup_ratio=0.25)


def killed_after_step(n, monkeypatch):
    """Make the next run die during step n + 1."""
    real_step, calls = trainer.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == n + 1:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step)
    return lambda: monkeypatch.setattr(trainer, "train_step", real_step)


@pytest.fixture
def lost_run(config, tmp_path, monkeypatch):
    """A run killed after step 4 (last checkpoint: step 3), snapshotted, then its folder lost."""
    restore = killed_after_step(4, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    restore()
    ckpt = Path(config.output_dir) / CHECKPOINT_NAME
    snap = tmp_path / "kept" / "phase1.pt"
    summary = checkpoint.save_snapshot(ckpt, snap)
    full = checkpoint.load(ckpt)
    ckpt_bytes = ckpt.stat().st_size
    for f in Path(config.output_dir).iterdir():
        f.unlink()
    Path(config.output_dir).rmdir()
    return snap, summary, full, ckpt_bytes


def test_a_snapshot_is_the_checkpoints_weights_in_half_precision_and_a_third_of_its_size(lost_run):
    snap, summary, full, ckpt_bytes = lost_run
    assert summary["step"] == 3 and summary["bytes"] == snap.stat().st_size
    assert summary["bytes"] < ckpt_bytes / 2.5, "no optimizer moments, half-width weights"
    state = checkpoint.load_snapshot(snap)
    assert state["step"] == 3 and state["config"] == full["config"]
    for name, tensor in full["model"].items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert torch.equal(state["model"][name], expected), name


def test_a_run_resumed_from_a_snapshot_ends_where_the_uninterrupted_run_ends(config, lost_run, tmp_path):
    """Same step count, the same learning rate from the snapshot's step on, and weights that start from it."""
    snap, _, full, _ = lost_run
    reference = train(replace(config, output_dir=str(tmp_path / "ref")))
    seen = []
    real_step = trainer.train_step

    def watching(module, micro, loss_fn, optimizer, scheduler, *rest):
        seen.append(scheduler.get_last_lr()[0])
        return real_step(module, micro, loss_fn, optimizer, scheduler, *rest)

    trainer.train_step = watching
    try:
        resumed = train(config, resume_weights=str(snap))
    finally:
        trainer.train_step = real_step
    assert resumed.first_step == 3 and resumed.steps == 8 and len(resumed.losses) == 5
    warmup, total, peak = 2, 8, config.learning_rate  # int(0.25 * 8) warm-up steps, then linear to 0
    assert seen == pytest.approx([peak * (total - s) / (total - warmup) for s in range(3, 8)])
    # the first resumed step sees the same batch and nearly the same weights as the uninterrupted run's step 4
    assert resumed.losses[0] == pytest.approx(reference.losses[3], rel=0.05)
    assert (Path(config.output_dir) / "model.safetensors").is_file()
    assert MultiExitQA.from_pretrained(config.output_dir).state_dict().keys() == full["model"].keys()


def test_a_snapshot_with_other_settings_is_refused_before_anything_is_written(config, lost_run):
    snap, *_ = lost_run
    with pytest.raises(UsageError, match="seed: 0 -> 1"):
        train(replace(config, seed=1), resume_weights=str(snap))
    assert not Path(config.output_dir).exists()


def test_resume_weights_refuses_a_full_checkpoint_a_missing_file_and_a_folder_with_a_checkpoint(config, tmp_path):
    train(replace(config, max_steps=3))
    ckpt = Path(config.output_dir) / CHECKPOINT_NAME
    other = replace(config, output_dir=str(tmp_path / "new"))
    with pytest.raises(UsageError, match="full checkpoint: put it in -o and pass --resume"):
        train(other, resume_weights=str(ckpt))
    with pytest.raises(UsageError, match="no such snapshot"):
        train(other, resume_weights=str(tmp_path / "none.pt"))
    snap = tmp_path / "s.pt"
    checkpoint.save_snapshot(ckpt, snap)
    with pytest.raises(UsageError, match="continue it with --resume"):
        train(config, resume_weights=str(snap))
    with pytest.raises(UsageError, match="pass one of them"):
        train(config, resume=True, resume_weights=str(snap))
    assert not Path(other.output_dir).exists()


def test_elma_snapshot_writes_once_and_refuses_a_taken_output(config, tmp_path, capsys):
    train(replace(config, max_steps=3))
    ckpt = str(Path(config.output_dir) / CHECKPOINT_NAME)
    out = tmp_path / "snap.pt"
    assert elma_main(["snapshot", ckpt, "-o", str(out)]) == 0
    assert "step 3" in capsys.readouterr().out
    before = out.read_bytes()
    assert elma_main(["snapshot", ckpt, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and out.read_bytes() == before
    assert elma_main(["snapshot", ckpt, "-o", str(out), "--overwrite"]) == 0
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    assert elma_main(["snapshot", str(bad), "-o", str(tmp_path / "x.pt")]) == 3
    assert "not a checkpoint of `elma train`" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
