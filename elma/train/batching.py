"""Length-grouped batches padded only to their longest window.

Sorting windows of similar length into the same batch cuts the padded tokens
that a CPU would otherwise multiply by zero; shuffling whole batches keeps the
order random. Everything is a pure function of (seed, epoch), which is what
makes ``--resume`` land on exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from elma.data.features import Window


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True, megabatch: int = 50) -> List[List[int]]:
    """Indices of every batch of one epoch, deterministic in (seed, epoch).

    Args:
        lengths: token count of every window.
        batch_size: windows per batch.
        group_by_length: sort within mega-batches of ``megabatch * batch_size`` windows.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        size = batch_size * megabatch
        lens = np.asarray(lengths)
        order = np.concatenate([
            chunk[np.argsort(-lens[chunk], kind="stable")] for chunk in np.array_split(order, max(1, -(-len(order) // size)))
        ])
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(windows: Sequence[Window], pad_id: int, pad_to: int = 0) -> dict:
    """Stack windows into (B, T) tensors, T = the longest window (or ``pad_to`` if larger)."""
    seq = max(max(len(w) for w in windows), pad_to)
    batch = len(windows)
    input_ids = torch.full((batch, seq), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((batch, seq), dtype=torch.long)
    attention_mask = torch.zeros((batch, seq), dtype=torch.long)
    context_mask = torch.zeros((batch, seq), dtype=torch.bool)  # context tokens (what skimming may drop)
    for i, w in enumerate(windows):
        n = len(w)
        input_ids[i, :n] = torch.tensor(w.input_ids)
        token_type_ids[i, :n] = torch.tensor(w.token_type_ids)
        attention_mask[i, :n] = 1
        context_mask[i, :n] = torch.tensor([o is not None for o in w.offsets])
    return {
        "context_mask": context_mask,
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "start_positions": torch.tensor([w.start_position for w in windows]),
        "end_positions": torch.tensor([w.end_position for w in windows]),
    }
