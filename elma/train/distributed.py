"""Data-parallel training across processes, launched with ``torchrun`` (one process per GPU, or CPU processes).

    torchrun --nproc_per_node 4 -m elma.cli train MODEL --train-file F -o DIR --batch-size 32 ...

Every process holds the whole model and an identical optimiser; each optimiser
step, the *global* batch (``batch_size`` windows, the batch a single process
would take) is cut into ``world_size x grad_accumulation`` micro-batches and
every process runs its share. Each micro-batch's mean loss is weighted by its
share of the global batch, and ``DistributedDataParallel`` averages gradients
over processes, so a step's gradient is the gradient of the global batch's mean
loss, whatever the number of processes: the run ends at the weights a single
process reaches (up to float summation order). Only rank 0 logs, reads and
writes checkpoints and evaluates.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
(https://pytorch.org/docs/stable/elastic/run.html); the backend is ``nccl`` on
CUDA, ``gloo`` on the CPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from elma.errors import UsageError


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job; ``DistEnv()`` is a single process."""

    rank: int = 0  # global rank, 0..world_size-1
    local_rank: int = 0  # rank on this machine (picks the GPU)
    world_size: int = 1  # processes in the job

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "DistEnv":
        """Read torchrun's variables; without them, one process.

        Raises:
            UsageError: malformed or inconsistent values.
        """
        env = os.environ if environ is None else environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError as err:
            raise UsageError(f"RANK/LOCAL_RANK/WORLD_SIZE must be integers (launch with torchrun): {err}") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise UsageError(f"rank {rank} of world size {world}: not a valid torchrun launch")
        return cls(rank, local, world)

    # ---- collectives: no-ops for a single process -------------------------------------------------------------------

    def setup(self, device: torch.device) -> None:
        """Join the process group (gloo on the CPU, nccl on CUDA)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=self.rank,
                                world_size=self.world_size)

    def teardown(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> Optional[List[object]]:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of ``value`` over ranks (every rank gets it)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def micro_batches(batch: Sequence[int], env: DistEnv, accumulation: int) -> List[Tuple[List[int], float]]:
    """This rank's micro-batches of one global batch, each with the weight of its mean loss.

    The global batch is cut into ``world_size * accumulation`` contiguous near-equal pieces; rank ``r`` takes
    pieces ``r*accumulation .. (r+1)*accumulation - 1``. A piece of ``n`` windows gets the weight
    ``n * world_size / len(batch)``: summed over a rank's pieces and averaged over ranks (what DDP does to
    gradients) the weighted means are the global batch's mean. A piece that comes out empty (a short last batch)
    is replaced by the batch's first window with weight 0, so that every rank still runs the same passes.
    """
    if accumulation < 1:
        raise ValueError(f"accumulation must be >= 1 (got {accumulation})")
    pieces = env.world_size * accumulation
    size, extra = divmod(len(batch), pieces)
    bounds = [0]
    for i in range(pieces):
        bounds.append(bounds[-1] + size + (1 if i < extra else 0))
    out = []
    for i in range(env.rank * accumulation, (env.rank + 1) * accumulation):
        idx = list(batch[bounds[i]:bounds[i + 1]])
        out.append((idx, len(idx) * env.world_size / len(batch)) if idx else ([batch[0]], 0.0))
    return out


class AllExits(nn.Module):
    """``model.all_exits`` as a module's ``forward``: what ``DistributedDataParallel`` wraps (it hooks ``forward``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model.all_exits(input_ids, attention_mask, token_type_ids)


def wrap(model: nn.Module, env: DistEnv, device: torch.device, skim_stages: Sequence = ()) -> nn.Module:
    """A module whose ``forward`` is ``model.all_exits`` (with ``skim_stages``: ``elma.train.skim.SkimmedAllExits``):
    DDP-wrapped when the job has several processes."""
    if skim_stages:
        from elma.train.skim import SkimmedAllExits

        module = SkimmedAllExits(model, skim_stages)
    else:
        module = AllExits(model)
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(module: nn.Module, last: bool):
    """Skip DDP's gradient all-reduce on every micro-batch but the last of a step (it runs once, on the sum)."""
    if last or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()
