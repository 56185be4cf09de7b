"""Where training runs and in which precision: ``--device auto|cpu|cuda|cuda:N``, autocast and the gradient scaler.

One ``Precision`` object owns the three places where mixed precision touches a
training step (the autocast context around the forward pass, the scaled
backward pass, the optimiser step), so that the loop reads the same on every
device:

- CPU: bfloat16 autocast with ``--bf16`` (as before), fp32 otherwise;
- CUDA: bfloat16 autocast with ``--bf16`` (Ampere and later), or float16 autocast
  with ``--fp16`` and a ``torch.amp.GradScaler`` (float16 gradients underflow
  without one: https://pytorch.org/docs/stable/amp.html#gradient-scaling).

Weights, optimiser state and the loss stay float32 in every case.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from elma.errors import UsageError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(spec: str, local_rank: int = 0, cuda_count: Optional[Callable[[], int]] = None) -> torch.device:
    """The device a ``--device`` value names.

    Args:
        spec: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: this process' rank on its machine; ``auto`` and ``cuda`` take GPU ``local_rank`` (one GPU per
            process under torchrun).
        cuda_count: how many CUDA devices there are (default ``torch.cuda.device_count``; tests inject one).

    Raises:
        UsageError: a malformed value, or a CUDA device that is not there.
    """
    match = DEVICE_PATTERN.match(spec.strip().lower())
    if not match or (match.group(1) != "cuda" and match.group(2) is not None):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N (got {spec!r})")
    kind, index = match.group(1), match.group(2)
    count = (cuda_count or _cuda_count)()
    if kind == "cpu" or (kind == "auto" and count == 0):
        return torch.device("cpu")
    if count == 0:
        raise UsageError(f"--device {spec}: no CUDA device here (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto")
    n = int(index) if index is not None else local_rank
    if n >= count:
        raise UsageError(f"--device {spec}: CUDA device {n} asked for, {count} present (0..{count - 1})")
    return torch.device("cuda", n)


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class Precision:
    """Autocast and gradient scaling of one run (see the module docstring).

    Attributes:
        device_type: ``"cpu"`` or ``"cuda"``.
        dtype: the autocast dtype, or None for plain float32.
        scaler: a ``torch.amp.GradScaler`` (float16 on CUDA), or None.
    """

    device_type: str
    dtype: Optional[torch.dtype] = None
    scaler: Optional[object] = None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        """The context for the forward pass (the loss is computed in float32 outside it)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true size before they are clipped."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step; with a scaler, skipped when a gradient overflowed, and the scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Optional[dict]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[dict]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def precision_for(device: torch.device, bf16: bool, fp16: bool) -> Precision:
    """The ``Precision`` that ``--bf16`` / ``--fp16`` ask for on ``device``.

    Raises:
        UsageError: both asked for, fp16 on the CPU, or bf16 on a GPU without bfloat16.
    """
    if bf16 and fp16:
        raise UsageError("--bf16 and --fp16 exclude each other; pick one")
    if device.type == "cpu":
        if fp16:
            raise UsageError("--fp16 is for CUDA devices; on the CPU use --bf16 (or neither)")
        return Precision("cpu", torch.bfloat16 if bf16 else None)
    if bf16:
        if not torch.cuda.is_bf16_supported():
            raise UsageError(f"--bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use --fp16")
        return Precision("cuda", torch.bfloat16)
    if fp16:
        return Precision("cuda", torch.float16, torch.amp.GradScaler("cuda"))
    return Precision("cuda")


def rng_state(device: torch.device) -> dict:
    """This process' random state: the CPU generator, and the CUDA one of ``device`` when training on a GPU."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore ``rng_state``'s result; a CUDA state is used only on a CUDA device (a CPU resume ignores it)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a collated batch; ``non_blocking`` overlaps the copy with compute when the batch is in pinned memory."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
