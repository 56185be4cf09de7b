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
    answerability: torch.Tensor = None  # depth-weighted BCE of the answerability heads (0 without them), detached
    teacher: torch.Tensor = None  # depth-weighted KL of the exits to a teacher model (None without one), detached


EXIT_WEIGHTS = ("linear", "uniform")


def depth_weights(num_exits: int, device=None, scheme: str = "linear") -> torch.Tensor:
    """Weights of the exits' losses, summing to 1.

    ``linear``: l / sum(l) for exits l = 1..L, deeper exits count more (the usual joint recipe; it gives exit 1
    of 6 a weight of 1/21). ``uniform``: 1 / L each, so that early exits are trained as hard as the last one.
    A comma list (``"1,1,2,2,3,3"``) gives the weights themselves, normalised.
    """
    if scheme == "linear":
        w = torch.arange(1, num_exits + 1, dtype=torch.float32, device=device)
    elif scheme == "uniform":
        w = torch.ones(num_exits, dtype=torch.float32, device=device)
    else:
        w = torch.tensor(parse_exit_weights(scheme, num_exits), dtype=torch.float32, device=device)
    return w / w.sum()


def parse_exit_weights(scheme: str, num_exits: "int | None" = None) -> list:
    """``linear``, ``uniform`` or a comma list of non-negative weights (one per exit when num_exits is given)."""
    if scheme in EXIT_WEIGHTS:
        return []
    try:
        values = [float(x) for x in scheme.split(",")]
    except ValueError:
        raise ValueError(f"exit weights must be linear, uniform or a comma list of numbers (got {scheme!r})") from None
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"exit weights must be >= 0 with a positive sum (got {scheme!r})")
    if num_exits is not None and len(values) != num_exits:
        raise ValueError(f"exit weights: {len(values)} values for {num_exits} exits (got {scheme!r})")
    return values


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


def answerability_loss_per_exit(null: torch.Tensor, start_pos: torch.Tensor) -> torch.Tensor:
    """(L,) mean BCE of each exit's answerability logit (L, B) against the no-answer label (start at CLS)."""
    target = start_pos.eq(0).float().expand_as(null)
    return F.binary_cross_entropy_with_logits(null.float(), target, reduction="none").mean(dim=1)


def multi_exit_loss(start: torch.Tensor, end: torch.Tensor, start_pos: torch.Tensor, end_pos: torch.Tensor,
                    distill_rate: float = 0.0, temperature: float = 1.0,
                    train_exits: slice = slice(None), exit_weights: str = "linear",
                    null: "torch.Tensor | None" = None, answerability_weight: float = 1.0) -> LossParts:
    """The seed thesis' loss: ``(1 - a) * (span + b * answerability) + a * distill``.

    Args:
        start, end: (L, B, T) logits of every exit.
        start_pos, end_pos: (B,) label positions (0 = CLS = no answer).
        distill_rate: a in [0, 1]; 0 disables distillation.
        temperature: softmax temperature of the distillation term.
        train_exits: exits whose span loss is counted (two-stage mode trains only the earlier heads).
        exit_weights: how the exits' losses are weighted (``depth_weights``).
        null: (L, B) answerability logits, or None (no answerability heads).
        answerability_weight: b, the weight of their binary loss.
    """
    if not 0.0 <= distill_rate <= 1.0:
        raise ValueError(f"distill_rate must be in [0, 1] (got {distill_rate})")
    per_exit = span_loss_per_exit(start, end, start_pos, end_pos)
    w = torch.zeros_like(per_exit)
    w[train_exits] = depth_weights(per_exit.shape[0], per_exit.device, exit_weights)[train_exits]
    span = (per_exit * w).sum() / w.sum()
    supervised = span
    answerability = per_exit.new_zeros(())
    if null is not None:
        answerability = (answerability_loss_per_exit(null, start_pos) * w).sum() / w.sum()
        supervised = span + answerability_weight * answerability
    distill = distill_loss(start, end, temperature) if distill_rate > 0 else per_exit.new_zeros(())
    total = (1 - distill_rate) * supervised + distill_rate * distill
    return LossParts(total, span.detach(), distill.detach(), per_exit.detach(), answerability.detach())


def kl_to_teacher_per_exit(start: torch.Tensor, end: torch.Tensor, teacher_start: torch.Tensor,
                           teacher_end: torch.Tensor, temperature: float) -> torch.Tensor:
    """(L,) mean over the batch of KL(teacher || exit) on start and end positions, averaged, times T^2.

    Args:
        start, end: (L, B, T) logits of every exit.
        teacher_start, teacher_end: (B, T) the teacher's logits (padding at ``MASK_FILL``, as the exits').
    """
    t = temperature
    parts = []
    for logits, teacher in ((start, teacher_start), (end, teacher_end)):
        target = F.log_softmax(teacher.detach().float() / t, dim=-1)  # (B, T)
        student = F.log_softmax(logits.float() / t, dim=-1)  # (L, B, T)
        kl = F.kl_div(student, target.expand_as(student), reduction="none", log_target=True).sum(-1)  # (L, B)
        parts.append(kl.mean(dim=1))
    return (parts[0] + parts[1]) / 2 * t * t


def with_teacher(parts: LossParts, start: torch.Tensor, end: torch.Tensor, teacher_start: torch.Tensor,
                 teacher_end: torch.Tensor, temperature: float, weight: float, train_exits: slice = slice(None),
                 exit_weights: str = "linear") -> LossParts:
    """``(1 - w) * parts.total + w * KL(teacher || exits)``, the exits' KLs weighted as their span losses are.

    Every trained exit learns the teacher's distribution (the usual distillation of small QA models), on top
    of the label loss and any self-distillation already in ``parts``.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"teacher weight must be in [0, 1] (got {weight})")
    per_exit = kl_to_teacher_per_exit(start, end, teacher_start, teacher_end, temperature)
    w = torch.zeros_like(per_exit)
    w[train_exits] = depth_weights(per_exit.shape[0], per_exit.device, exit_weights)[train_exits]
    kl = (per_exit * w).sum() / w.sum()
    total = (1 - weight) * parts.total + weight * kl
    return LossParts(total, parts.span, parts.distill, parts.per_exit, parts.answerability, kl.detach())
