"""Training with skimming: the token drop of the runtime's skim stages, applied during fine-tuning.

``elma train --skim skim:2,0.001`` (stages joined by ``+``, the runtime's spec) runs the model layer by layer
through the steps the bundle is exported from (``elma.model.steps``): after a stage's layer, each window's
context tokens whose start and end probability at that exit are both under the threshold are dropped, with the
runtime's own rule (``elma.runtime.skim.keep_positions``: CLS, the question, the separators and a margin around
the best candidate spans stay). As PoWER-BERT and Learned Token Pruning train, a dropped token is masked out
of attention for every later layer (the kept tokens then see exactly what they see when the runtime removes
the dropped ones: positions were added at the embeddings), and the later exits' logits there are
``MASK_FILL``, so their loss ranges over the kept tokens only. One difference from inference: the labelled
start and end tokens are always kept, so that every exit's loss is defined (a dropped label has no logit to
learn); at inference the rule alone decides, and ``elma calibrate`` measures what that costs.

With a threshold of 0 nothing is dropped and training is the plain multi-exit training (a test checks the
losses are the same). The drop is decided without gradient, on the host, per window.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from elma.model.multi_exit import MASK_FILL, exit_logits
from elma.model.steps import model_steps
from elma.runtime.skim import MAX_ANSWER_TOKENS, SkimStage, keep_positions

SKIM_INPUTS = ("context_mask", "start_positions", "end_positions")  # batch keys the skimming forward reads too


def parse_skim(spec: str, num_layers: Optional[int] = None) -> Tuple[SkimStage, ...]:
    """``skim:2,0.001[+skim:4,0.01]`` -> its stages (the runtime's parser).

    Raises:
        ValueError: not skim stages, or a stage with no layer after it.
    """
    from elma.runtime.policies import parse_policy

    spec = spec.strip()
    if not spec.startswith("skim:"):
        raise ValueError(f"--skim takes skim stages, skim:LAYER,THRESHOLD[,MARGIN[,SPANS]] (got {spec!r})")
    stages = parse_policy(f"none+{spec}").skim_stages
    if num_layers is not None:
        for s in stages:
            if s.layer >= num_layers:
                raise ValueError(f"--skim {spec}: skim after layer {s.layer} leaves no layer to train on the kept "
                                 f"tokens (the model has {num_layers})")
    return stages


class SkimmedExitLogits(NamedTuple):
    """``ExitLogits`` plus which tokens each exit ran on."""

    start: torch.Tensor  # (L, B, T), MASK_FILL on padding and dropped tokens
    end: torch.Tensor  # (L, B, T)
    null: Optional[torch.Tensor]  # (L, B) or None
    live: torch.Tensor  # (L, B, T) bool: the tokens the layer ran (attention mask after the earlier stages)


def keep_mask(start: torch.Tensor, end: torch.Tensor, attention_mask: torch.Tensor, context_mask: torch.Tensor,
              stage: SkimStage, start_positions: torch.Tensor, end_positions: torch.Tensor) -> torch.Tensor:
    """(B, T) the new attention mask after ``stage``: each row's live tokens that ``keep_positions`` keeps (on
    the row's live tokens, as the runtime runs it), and its labelled start and end tokens.

    Args:
        start, end: (B, T) the stage layer's exit logits.
        attention_mask: (B, T) the tokens the layer ran (1/0).
        context_mask: (B, T) context tokens (the only ones that may go).
        start_positions, end_positions: (B,) labels (0: no answer, CLS).
    """
    s = start.detach().float().cpu().numpy()
    e = end.detach().float().cpu().numpy()
    live = attention_mask.detach().bool().cpu().numpy()
    ctx = context_mask.detach().bool().cpu().numpy()
    new = np.zeros_like(live)
    for b in range(live.shape[0]):
        pos = np.flatnonzero(live[b])  # the row's current tokens, in order
        answer = ctx[b, pos] | (pos == 0)  # CLS and context: the exit distributions' range
        kept = keep_positions(s[b, pos], e[b, pos], answer, ctx[b, pos], stage.threshold, stage.margin, stage.spans,
                              MAX_ANSWER_TOKENS)
        new[b, pos[kept]] = True
    rows = np.arange(live.shape[0])
    new[rows, start_positions.cpu().numpy()] |= live[rows, start_positions.cpu().numpy()]
    new[rows, end_positions.cpu().numpy()] |= live[rows, end_positions.cpu().numpy()]
    return torch.from_numpy(new).to(device=attention_mask.device, dtype=attention_mask.dtype)


class SkimmedAllExits(nn.Module):
    """``forward(ids, mask, types, context_mask, start_positions, end_positions) -> SkimmedExitLogits``: every
    exit of ``model``, layer by layer, skimming after each stage (what ``distributed.wrap`` wraps instead of
    ``AllExits``)."""

    def __init__(self, model: nn.Module, stages: Sequence[SkimStage]):
        super().__init__()
        self.model = model
        was_training = model.training
        self._steps = model_steps(model)  # shares the model's modules (puts them in eval mode: restored below)
        model.train(was_training)
        self.stages = {s.layer: s for s in stages}

    def forward(self, input_ids, attention_mask, token_type_ids, context_mask, start_positions, end_positions):
        steps, model = self._steps, self.model
        null_heads = model.null_heads if model.null_heads is not None else [None] * model.num_exits
        hidden = steps.embeddings(input_ids, token_type_ids)  # (B, T, H)
        mask = attention_mask
        starts, ends, nulls, lives = [], [], [], []
        last = len(steps.layer_groups)
        for slot, g in enumerate(steps.layer_groups):
            hidden = steps.groups[g](hidden, mask)
            start, end, null = exit_logits(model.exits[slot], null_heads[slot], hidden, mask)
            starts.append(start)
            ends.append(end)
            nulls.append(null)
            lives.append(mask.bool())
            stage = self.stages.get(slot + 1)
            if stage is not None and slot + 1 < last:
                mask = keep_mask(start, end, mask, context_mask, stage, start_positions, end_positions)
        null = torch.stack(nulls) if model.null_heads is not None else None
        return SkimmedExitLogits(torch.stack(starts), torch.stack(ends), null, torch.stack(lives))


def mask_teacher(teacher: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """(B, T) teacher logits -> (L, B, T), ``MASK_FILL`` where exit l dropped the token: each exit learns the
    teacher's distribution over the tokens it ran."""
    return torch.where(live, teacher.unsqueeze(0), torch.full_like(teacher, MASK_FILL).unsqueeze(0))
