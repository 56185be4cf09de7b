"""One training step: the same weights through the old single-CPU step, the new one, a gradient scaler and
gradient accumulation; DataLoader workers change nothing."""

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from conftest import tiny_config  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from elma.model.multi_exit import MultiExitQA  # noqa: E402
from elma.train.device import Precision  # noqa: E402
from elma.train.distributed import DistEnv, micro_batches, wrap  # noqa: E402
from elma.train.loop import StepBatches, iterate, train_step  # noqa: E402
from elma.train.losses import multi_exit_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_throughput import legacy_step  # noqa: E402


def setup(seed=0, sgd=False):
    cfg = tiny_config("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = MultiExitQA(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    optimizer = (torch.optim.SGD if sgd else torch.optim.AdamW)(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler


def batches(n=3, size=6, seq=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 100, (size, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[-2:, seq - 5:] = 0
        types = torch.zeros_like(ids)
        types[:, seq // 2:] = 1
        start = torch.randint(0, seq - 5, (size,), generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "start_positions": start,
                    "end_positions": start + 2})
    return out


def loss_fn(logits, batch):
    return multi_exit_loss(logits.start.float(), logits.end.float(), batch["start_positions"], batch["end_positions"])


def rows(batch, idx):
    return {k: v[idx] for k, v in batch.items()}


def run_new(steps_micro, precision=None, sgd=False):
    model, opt, sched = setup(sgd=sgd)
    module = wrap(model, DistEnv(), torch.device("cpu"))
    for micro in steps_micro:
        train_step(module, micro, loss_fn, opt, sched, precision or Precision("cpu"), list(model.parameters()), 1.0,
                   torch.device("cpu"))
    return model.state_dict()


def test_new_step_is_bit_identical_to_the_old_single_cpu_step():
    data = batches()
    model, opt, sched = setup()
    for b in data:
        legacy_step(model, b, opt, sched, bf16=False, max_grad_norm=1.0)
    old = model.state_dict()
    new = run_new([[(b, 1.0)] for b in data])
    assert all(torch.equal(old[k], new[k]) for k in old)


def test_a_gradient_scaler_is_unscaled_before_clipping():
    """A real GradScaler (CPU): scaling by 2^k and unscaling before the clip is exact, so weights are the same;
    a scaler used wrongly (clip before unscale, no update) would clip 2^k-times larger gradients."""
    data = batches()
    plain = run_new([[(b, 1.0)] for b in data])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    scaled = run_new([[(b, 1.0)] for b in data], Precision("cpu", None, scaler))
    assert all(torch.equal(plain[k], scaled[k]) for k in plain)
    assert scaler.get_scale() == 2.0 ** 12 and scaler._growth_tracker.item() == 3, "update() ran once per step"


def test_accumulated_micro_batches_equal_the_whole_batch():
    """The same gradient, hence (SGD: no normalisation of near-zero gradients) the same weights."""
    data = batches(size=7)  # 7 windows in 3 micro-batches: 3, 2, 2 -- unequal pieces weighted by their size
    whole = run_new([[(b, 1.0)] for b in data], sgd=True)
    env = DistEnv()
    split = run_new([[(rows(b, idx), w) for idx, w in micro_batches(list(range(7)), env, 3)] for b in data], sgd=True)
    before = setup(sgd=True)[0].state_dict()
    for k in whole:
        moved = (whole[k] - before[k]).norm()
        assert (whole[k] - split[k]).norm() <= 1e-5 * moved + 1e-7, k
    unweighted = run_new([[(rows(b, idx), 1 / 3) for idx, _ in micro_batches(list(range(7)), env, 3)] for b in data],
                         sgd=True)
    assert any((whole[k] - unweighted[k]).norm() > 1e-3 * (whole[k] - before[k]).norm() for k in whole), \
        "pieces of unequal size must be weighted by their size: a plain mean of means is another gradient"


def test_micro_batches_cover_the_batch_once_with_weights_that_average_to_one():
    batch = list(range(10, 21))  # 11 windows
    for world, accum in [(1, 1), (2, 1), (2, 3), (4, 2), (3, 5)]:
        seen, weights = [], []
        for rank in range(world):
            for idx, w in micro_batches(batch, DistEnv(rank, rank, world), accum):
                if w > 0:
                    seen += idx
                    assert w == pytest.approx(len(idx) * world / len(batch))
                weights.append(w)
        assert sorted(seen) == batch
        assert sum(weights) / world == pytest.approx(1.0)
    # more pieces than windows: the empty ones run the first window with weight 0
    micro = micro_batches([7, 8], DistEnv(1, 1, 2), 2)
    assert micro == [([7], 0.0), ([7], 0.0)]


def test_dataloader_workers_give_the_same_batches(wordpiece_tokenizer, tiny_squad):
    from elma.data.features import WindowConfig, build_windows
    from elma.data.squad import load_squad
    from elma.train.batching import epoch_batches

    windows = build_windows(load_squad(tiny_squad), wordpiece_tokenizer, WindowConfig(48, 8, 12))
    order = epoch_batches([len(w) for w in windows], 5, seed=0, epoch=0)
    data = StepBatches(windows, order, 0, DistEnv(), 2)
    rng = torch.get_rng_state()
    inline = list(iterate(data, workers=0, pin_memory=False, seed=0))
    assert torch.equal(rng, torch.get_rng_state()), "collating draws nothing from the global random stream"
    loaded = list(iterate(data, workers=2, pin_memory=False, seed=0))
    assert len(inline) == len(loaded) == len(order)
    for a, b in zip(inline, loaded):
        assert [w for _, w in a] == [w for _, w in b]
        assert all(torch.equal(x[0][k], y[0][k]) for x, y in zip(a, b) for k in x[0])
    assert torch.equal(rng, torch.get_rng_state()), "the loader's worker seed comes from its own generator"
