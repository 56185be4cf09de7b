"""``--teacher MODEL``: a stronger extractive-QA model whose start/end distributions every exit learns to match.

The teacher is any Hugging Face ``AutoModelForQuestionAnswering`` checkpoint (folder or model id) or an ELMA
model folder (its last exit). It reads the student's windows, so it must use the same vocabulary: token ids
mean the same words only then. A teacher with another vocabulary is refused (a re-tokenising teacher would
see other windows and other positions, and its distributions would not line up with the student's tokens).
"""

from __future__ import annotations

import inspect
import logging
from typing import Tuple

import torch

from elma.errors import ModelLoadError
from elma.model.multi_exit import MASK_FILL, MultiExitQA, encoder_token_types
from elma.train.backbone import encoder_config_of, load_any_tokenizer, resolve_source

logger = logging.getLogger(__name__)


class Teacher:
    """A frozen QA model in eval mode: ``logits(ids, mask, types)`` -> start, end (B, T), padding at ``MASK_FILL``."""

    def __init__(self, model: torch.nn.Module, is_elma: bool, name: str):
        self.model = model.eval().requires_grad_(False)
        self.is_elma = is_elma
        self.name = name
        forward = model.all_exits if is_elma else model.forward
        self._takes_types = "token_type_ids" in inspect.signature(forward).parameters

    def to(self, device: torch.device) -> "Teacher":
        self.model.to(device)
        return self

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.is_elma:
            out = self.model.all_exits(input_ids, attention_mask, token_type_ids)
            return out.start[-1].float(), out.end[-1].float()
        kwargs = {}
        if self._takes_types:
            kwargs["token_type_ids"] = encoder_token_types(self.model.config, token_type_ids)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        pad = attention_mask == 0
        return out.start_logits.float().masked_fill(pad, MASK_FILL), out.end_logits.float().masked_fill(pad, MASK_FILL)


def load_teacher(name: str, student_tokenizer, max_seq_length: int) -> Teacher:
    """Load ``name`` and check that it can read the student's windows.

    Raises:
        ModelLoadError: not a QA model, another vocabulary, or too short a position table.
    """
    source = resolve_source(name)
    kind, cfg = encoder_config_of(source)
    if kind == "json":
        raise ModelLoadError(f"--teacher {name}: a config file has no trained weights; pass a QA model folder or id")
    if kind == "elma":
        model, is_elma = MultiExitQA.from_pretrained(source), True
    else:
        from transformers import AutoModelForQuestionAnswering

        archs = cfg.get("architectures") or []
        if not any(a.endswith("ForQuestionAnswering") for a in archs):
            raise ModelLoadError(f"--teacher {name}: not an extractive-QA checkpoint (architectures {archs}); "
                                 f"a teacher needs trained start/end heads (...ForQuestionAnswering)")
        try:
            model, is_elma = AutoModelForQuestionAnswering.from_pretrained(str(source)), False
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"--teacher {name}: cannot load: {str(err).splitlines()[0]}") from err
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and positions < max_seq_length:
        raise ModelLoadError(f"--teacher {name}: takes {positions} positions, the windows have up to {max_seq_length}")
    check_same_vocabulary(load_any_tokenizer(source), student_tokenizer, name)
    logger.info("teacher %s (%s, %d layers)", name, model.config.model_type, model.config.num_hidden_layers)
    return Teacher(model, is_elma, name)


def check_same_vocabulary(teacher_tok, student_tok, name: str) -> None:
    """Refuse a teacher whose token ids mean other tokens than the student's."""
    a, b = teacher_tok.get_vocab(), student_tok.get_vocab()
    if a == b:
        return
    differ = sorted(t for t in set(a) | set(b) if a.get(t) != b.get(t))
    raise ModelLoadError(f"--teacher {name}: its vocabulary differs from the student's ({len(a)} vs {len(b)} tokens, "
                         f"{len(differ)} differ, e.g. {differ[:3]}); distillation reads the student's token ids, so "
                         f"pick a teacher of the same tokenizer (e.g. the same family)")
