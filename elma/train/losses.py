"""Multi-exit QA losses: depth-weighted joint cross-entropy and self-distillation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    total: torch.Tensor  # what is back-propagated
    span: torch.Tensor  # depth-weighted mean over exits of (start CE + end CE) / 2
    distill: torch.Tensor  # mean KL of the earlier exits to the last one (0 when disabled)
    per_exit: torch.Tensor  # (L,) span loss of each exit, detached


def depth_weights(num_exits: int, device=None) -> torch.Tensor:
    """Weights l / sum(l) for exits l = 1..L: deeper exits count more (the usual joint recipe)."""
    w = torch.arange(1, num_exits + 1, dtype=torch.float32, device=device)
    return w / w.sum()


def span_loss_per_exit(start: torch.Tensor, end: torch.Tensor, start_pos: torch.Tensor,
                       end_pos: torch.Tensor) -> torch.Tensor:
    """(L,) mean over the batch of (CE(start) + CE(end)) / 2 for each exit; logits are (L, B, T)."""
    n_exits, batch, seq = start.shape
    flat_s = start.reshape(n_exits * batch, seq).float()
    flat_e = end.reshape(n_exits * batch, seq).float()
    ce_s = F.cross_entropy(flat_s, start_pos.repeat(n_exits), reduction="none").view(n_exits, batch)
    ce_e = F.cross_entropy(flat_e, end_pos.repeat(n_exits), reduction="none").view(n_exits, batch)
    return ((ce_s + ce_e) / 2).mean(dim=1)


def distill_loss(start: torch.Tensor, end: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean KL(teacher || student) over the earlier exits, the last exit (detached) as teacher.

    Scaled by T^2 so that its gradient keeps its size as the temperature changes (Hinton et al.).
    """
    if start.shape[0] < 2:
        return start.new_zeros(())
    t = temperature
    parts = []
    for logits in (start.float(), end.float()):
        teacher = F.log_softmax(logits[-1].detach() / t, dim=-1)  # (B, T)
        student = F.log_softmax(logits[:-1] / t, dim=-1)  # (L-1, B, T)
        kl = F.kl_div(student, teacher.expand_as(student), reduction="none", log_target=True).sum(-1)  # (L-1, B)
        parts.append(kl.mean())
    return (parts[0] + parts[1]) / 2 * t * t


def multi_exit_loss(start: torch.Tensor, end: torch.Tensor, start_pos: torch.Tensor, end_pos: torch.Tensor,
                    distill_rate: float = 0.0, temperature: float = 1.0,
                    train_exits: slice = slice(None)) -> LossParts:
    """The seed thesis' loss: ``(1 - a) * span + a * distill``.

    Args:
        start, end: (L, B, T) logits of every exit.
        start_pos, end_pos: (B,) label positions (0 = CLS = no answer).
        distill_rate: a in [0, 1]; 0 disables distillation.
        temperature: softmax temperature of the distillation term.
        train_exits: exits whose span loss is counted (two-stage mode trains only the earlier heads).
    """
    if not 0.0 <= distill_rate <= 1.0:
        raise ValueError(f"distill_rate must be in [0, 1] (got {distill_rate})")
    per_exit = span_loss_per_exit(start, end, start_pos, end_pos)
    w = torch.zeros_like(per_exit)
    w[train_exits] = depth_weights(per_exit.shape[0], per_exit.device)[train_exits]
    span = (per_exit * w).sum() / w.sum()
    distill = distill_loss(start, end, temperature) if distill_rate > 0 else per_exit.new_zeros(())
    total = (1 - distill_rate) * span + distill_rate * distill
    return LossParts(total, span.detach(), distill.detach(), per_exit.detach())
