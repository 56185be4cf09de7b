"""One optimiser step, and the batches that feed the steps.

``train_step`` is the whole of what a step does, on any device and in any
process of a data-parallel job:

    for each micro-batch of this process:  forward (autocast) -> loss x weight -> backward (scaled)
    unscale -> clip the gradient norm -> optimiser step (skipped by the scaler on overflow) -> scheduler step

With one process and one micro-batch (weight 1) it is exactly the step of the
single-CPU trainer it replaces: same operations, same order, same results.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Sequence, Tuple

import torch

from elma.train.batching import collate
from elma.train.device import Precision, to_device
from elma.train.distributed import DistEnv, micro_batches, no_sync
from elma.train.losses import LossParts

MicroBatch = Tuple[dict, float]  # a collated batch and the weight of its mean loss (distributed.micro_batches)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what the module's forward takes, in order


def train_step(module: torch.nn.Module, micro: Sequence[MicroBatch], loss_fn: Callable[[object, dict], LossParts],
               optimizer: torch.optim.Optimizer, scheduler, precision: Precision, params: List[torch.nn.Parameter],
               max_grad_norm: float, device: torch.device,
               inputs: Sequence[str] = MODEL_INPUTS) -> Tuple[torch.Tensor, LossParts]:
    """Run one optimiser step over this process' micro-batches.

    Args:
        module: ``distributed.wrap``'s module: ``forward(ids, mask, types) -> ExitLogits``.
        micro: this process' micro-batches of the step's global batch, with their loss weights.
        loss_fn: (ExitLogits, batch on device) -> LossParts.
        params: the parameters whose gradient norm is clipped.
        inputs: the batch keys passed to ``module`` (training with skimming adds ``elma.train.skim.SKIM_INPUTS``).

    Returns:
        This process' weighted loss (a detached scalar: summed over processes and divided by their number it is
        the global batch's mean loss), and the last micro-batch's ``LossParts`` (for the log).
    """
    optimizer.zero_grad(set_to_none=True)
    total = None
    for k, (batch, weight) in enumerate(micro):
        batch = to_device(batch, device)
        with no_sync(module, last=k == len(micro) - 1):
            with precision.autocast():
                logits = module(*(batch[k] for k in inputs))
            parts = loss_fn(logits, batch)
            loss = parts.total if weight == 1.0 else parts.total * weight
            precision.backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    precision.unscale(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    precision.step(optimizer)
    scheduler.step()
    return total, parts


class StepBatches(torch.utils.data.Dataset):
    """Item ``k``: this process' collated micro-batches of the ``k``-th global batch (index lists of windows)."""

    def __init__(self, windows: Sequence, batches: Sequence[Sequence[int]], pad_id: int, env: DistEnv,
                 accumulation: int):
        self.windows = windows
        self.batches = batches
        self.pad_id = pad_id
        self.env = env
        self.accumulation = accumulation

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> List[MicroBatch]:
        return [(collate([self.windows[i] for i in idx], self.pad_id), w)
                for idx, w in micro_batches(self.batches[k], self.env, self.accumulation)]


def iterate(data: StepBatches, workers: int, pin_memory: bool, seed: int) -> Iterator[List[MicroBatch]]:
    """The steps' micro-batches in order, collated in ``workers`` background processes when asked.

    Collation is deterministic, so workers and pinned memory change nothing but speed. Without either,
    batches are collated in this process, as before. The DataLoader draws a base seed for its workers from the
    generator it is given: a private one, so that the global random stream (dropout) is not touched.
    """
    if workers == 0 and not pin_memory:
        return (data[k] for k in range(len(data)))
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=workers,
                                         pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
                                         prefetch_factor=4 if workers else None)
    return iter(loader)
