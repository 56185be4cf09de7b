"""Data-parallel training under torchrun (gloo, CPU): two processes reach the weights of one process with the same
global batch, and a job whose rank 1 is killed resumes to the same end."""

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
from elma.errors import UsageError  # noqa: E402
from elma.model.multi_exit import MultiExitQA  # noqa: E402
from elma.train.distributed import DistEnv  # noqa: E402
from elma.train.trainer import CHECKPOINT_NAME, TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("max_seq_length", "doc_stride", "max_query_length", "batch_size", "learning_rate", "warmup_ratio", "max_steps",
         "save_every", "log_every", "seed", "threads", "grad_accumulation")


def test_env_reads_torchrun_variables():
    assert DistEnv.from_env({}) == DistEnv(0, 0, 1)
    env = DistEnv.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (env.rank, env.local_rank, env.world_size, env.is_main, env.distributed) == (3, 1, 4, False, True)
    with pytest.raises(UsageError, match="not a valid torchrun launch"):
        DistEnv.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UsageError, match="integers"):
        DistEnv.from_env({"WORLD_SIZE": "two"})


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A tiny BERT without dropout (dropout draws differ per process by design), data and tokenizer."""
    from conftest import make_wordpiece_tokenizer, squad_payload, tiny_config

    root = tmp_path_factory.mktemp("ddp")
    model = root / "tiny-bert.json"
    model.write_text(json.dumps(tiny_config("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    data = root / "squad.json"
    data.write_text(json.dumps(squad_payload(copies=4)))
    tok = root / "tokenizer.json"
    make_wordpiece_tokenizer().save(str(tok))
    config = TrainConfig(model=str(model), tokenizer=str(tok), train_files=(str(data),), output_dir=str(root / "one"),
                         max_seq_length=48, doc_stride=8, max_query_length=12, batch_size=6, learning_rate=1e-3,
                         warmup_ratio=0.0, max_steps=6, save_every=1, log_every=3, seed=0, threads=1)
    single = train(config)
    return root, config, single


def torchrun(config: TrainConfig, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "elma.cli",
           "train", config.model, "--tokenizer", config.tokenizer, "--train-file", *config.train_files, "-o", str(out),
           "--device", "cpu", *extra]
    for field in FLAGS:
        cmd += [f"--{field.replace('_', '-')}", str(getattr(config, field))]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


# Directions the loss cannot see: a key bias adds the same score to every key of a query, and a bias on the exits'
# logits (the exit heads' own, and the last LayerNorm's, which feeds only the last head) shifts every position's
# logit alike; their gradients are 0 up to rounding, which AdamW divides by its own tiny size. They move
# differently in the two runs and change no prediction (checked on the logits below).
def invisible(name: str, num_layers: int) -> bool:
    return (name.endswith("attention.self.key.bias") or (name.startswith("exits.") and name.endswith(".bias"))
            or name == f"encoder.encoder.layer.{num_layers - 1}.output.LayerNorm.bias")


def assert_same_model(a_dir: Path, b_dir: Path) -> None:
    a, b = MultiExitQA.from_pretrained(a_dir), MultiExitQA.from_pretrained(b_dir)
    sa, sb = a.state_dict(), b.state_dict()
    before = MultiExitQA(a.config)  # what 1e-5 is relative to: the weights' own size
    checked = 0
    for k in sa:
        if invisible(k, a.num_exits):
            continue
        rel = ((sa[k] - sb[k]).norm() / sb[k].norm().clamp_min(1e-12)).item()
        assert rel <= 1e-5, f"{k}: relative difference {rel:.2e}"
        checked += 1
    assert checked > len(sa) * 0.8 and before is not None
    ids = torch.randint(5, 100, (3, 24), generator=torch.Generator().manual_seed(0))
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    types[:, 12:] = 1
    with torch.no_grad():
        la, lb = a.all_exits(ids, mask, types), b.all_exits(ids, mask, types)
    for x, y in ((la.start, lb.start), (la.end, lb.end)):
        assert (x.log_softmax(-1) - y.log_softmax(-1)).abs().max() <= 1e-4


def test_two_gloo_processes_equal_one_process(setting):
    root, config, single = setting
    proc = torchrun(config, root / "two", "--grad-accumulation", "2")  # 2 processes x 2 micro-batches of the 6
    log = finish(proc)
    assert_same_model(root / "one", root / "two")
    state = json.loads((root / "two" / "train_state.json").read_text())
    assert state["world_size"] == 2 and state["steps"] == config.max_steps
    assert state["losses"] == pytest.approx(single.losses, rel=1e-5), "the logged loss is the global batch's mean"
    assert log.count("step 3/6") == 1, "only rank 0 logs"


@pytest.mark.slow  # two torchrun launches (about a minute here); the single-process kill test is not slow
def test_a_job_with_a_killed_rank_resumes_to_the_same_end(setting):
    root, config, _ = setting
    out = root / "killed"
    proc = torchrun(config, out)
    deadline = time.monotonic() + 240
    victim = None
    while victim is None:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        if (out / CHECKPOINT_NAME).exists():
            victim = rank_pid(proc.pid, 1)
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0, "torchrun ends the job when a rank dies"
    killed_at = torch.load(out / CHECKPOINT_NAME, weights_only=False)["step"]
    assert 0 < killed_at < config.max_steps, "the kill landed mid-run"
    finish(torchrun(config, out, "--resume"))
    state = json.loads((out / "train_state.json").read_text())
    assert state["first_step"] == killed_at and state["steps"] == config.max_steps
    assert_same_model(root / "one", out)


def rank_pid(launcher: int, rank: int):
    """The pid of torchrun's worker of ``rank`` (read from /proc), or None while it is not started."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children")
    if not children.exists():
        pytest.skip("needs Linux /proc to find a worker process")
    for pid in children.read_text().split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def test_a_resume_may_change_the_device_but_not_the_batch(setting):
    """--device is where a run goes, not where it ends; the batch decides the end."""
    root, config, _ = setting
    with pytest.raises(UsageError, match="batch_size: 6 -> 4"):
        train(replace(config, batch_size=4, max_steps=7), resume=True)
    result = train(replace(config, device="cpu", max_steps=6), resume=True)
    assert result.first_step == 6 and result.losses == []
