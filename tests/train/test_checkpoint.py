"""checkpoint.pt across versions and devices: a checkpoint written before devices, processes and teachers existed
(keys model, optimizer, scheduler, rng, step, config without the new fields) resumes to the uninterrupted end."""

from dataclasses import asdict, replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from elma.errors import UsageError  # noqa: E402
from elma.model.multi_exit import MultiExitQA  # noqa: E402
from elma.train import checkpoint, trainer  # noqa: E402
from elma.train.checkpoint import check_resumable  # noqa: E402
from elma.train.trainer import CHECKPOINT_NAME, TrainConfig, train  # noqa: E402

NEW_FIELDS = ("device", "fp16", "grad_accumulation", "dataloader_workers", "teacher", "teacher_weight")
OLD_KEYS = {"model", "optimizer", "scheduler", "rng", "step", "config"}


@pytest.fixture
def config(tiny_train_config):
    return tiny_train_config(max_steps=8, save_every=3, log_every=4, bf16=True)


def old_config_dict(config: TrainConfig) -> dict:
    """``asdict(TrainConfig)`` as the trainer before this change wrote it."""
    return {k: v for k, v in asdict(config).items() if k not in NEW_FIELDS}


def test_an_old_config_matches_when_the_new_fields_are_at_their_defaults(config):
    check_resumable(old_config_dict(config), config, Path("c.pt"))
    check_resumable(old_config_dict(config), replace(config, device="cpu", dataloader_workers=2), Path("c.pt"))
    with pytest.raises(UsageError, match="teacher: None -> 'x'"):
        check_resumable(old_config_dict(config), replace(config, teacher="x"), Path("c.pt"))
    with pytest.raises(UsageError, match="grad_accumulation: 1 -> 2"):
        check_resumable(old_config_dict(config), replace(config, grad_accumulation=2), Path("c.pt"))
    with pytest.raises(UsageError, match="seed: 0 -> 1"):
        check_resumable(old_config_dict(config), replace(config, seed=1), Path("c.pt"))
    listed = {**old_config_dict(config), "train_files": list(config.train_files)}  # a list after a round trip
    check_resumable(listed, config, Path("c.pt"))


def test_an_old_format_checkpoint_resumes_to_the_uninterrupted_end(config, tmp_path, monkeypatch):
    reference = train(replace(config, output_dir=str(tmp_path / "ref")))
    real_step, calls = trainer.train_step, []

    def killed_after_step_4(*args, **kwargs):  # the run dies during step 5, after the checkpoint of step 3
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(trainer, "train_step", real_step)
    ckpt = Path(config.output_dir) / CHECKPOINT_NAME
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 3
    old = {k: state[k] for k in OLD_KEYS}  # what the previous trainer wrote: nothing else
    old["config"] = old_config_dict(config)
    torch.save(old, ckpt)

    resumed = train(config, resume=True)
    assert resumed.first_step == 3 and resumed.losses == reference.losses[3:]
    a = MultiExitQA.from_pretrained(config.output_dir).state_dict()
    b = MultiExitQA.from_pretrained(tmp_path / "ref").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "bit-identical to the uninterrupted run"


def test_checkpoints_load_onto_the_cpu_whatever_device_wrote_them(config, tmp_path):
    """Tensors are mapped to the CPU on load; the saved random state of every rank is kept."""
    train(replace(config, max_steps=3))
    state = checkpoint.load(Path(config.output_dir) / CHECKPOINT_NAME)
    assert OLD_KEYS <= set(state) and state["world_size"] == 1 and state["scaler"] is None
    assert torch.equal(state["rng"], state["rng_ranks"][0]["cpu"])
    assert all(t.device.type == "cpu" for t in state["model"].values())
    assert checkpoint.rank_rng({"rng": state["rng"]}, 0, 1)["cpu"] is state["rng"]
    assert checkpoint.rank_rng({"rng": state["rng"]}, 1, 2) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")
def test_a_gpu_checkpoint_resumes_on_the_cpu(config, tmp_path, monkeypatch):
    gpu = replace(config, device="cuda", bf16=False, max_steps=6)
    real_step, calls = trainer.train_step, []

    def killed_after_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(gpu)
    monkeypatch.setattr(trainer, "train_step", real_step)
    state = checkpoint.load(Path(config.output_dir) / CHECKPOINT_NAME)
    assert "cuda" in state["rng_ranks"][0]
    result = train(replace(gpu, device="cpu"), resume=True)
    assert result.first_step == 3 and result.steps == 6


def test_convert_turns_a_running_checkpoint_into_the_model_the_run_would_save(config, tmp_path, capsys):
    from elma.cli import main as elma_main

    train(config)  # 8 steps: the last checkpoint is the final step's
    ckpt = Path(config.output_dir) / CHECKPOINT_NAME
    assert elma_main(["convert", str(ckpt), "-o", str(tmp_path / "snap"), "--dtype", "float32"]) == 0
    assert "step 8" in capsys.readouterr().out
    final, snap = MultiExitQA.from_pretrained(config.output_dir), MultiExitQA.from_pretrained(tmp_path / "snap")
    a, b = final.state_dict(), snap.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    assert elma_main(["convert", str(bad), "-o", str(tmp_path / "x")]) == 3
    assert "not a checkpoint of `elma train`" in capsys.readouterr().err and not (tmp_path / "x").exists()
