"""A ``MultiExitQA`` cut into the steps the device runs one at a time.

The runtime stops between layers, so the model is run as a chain:

    embeddings(input_ids, token_type_ids)        -> hidden          (B, T, H)
    group[g](hidden, attention_mask)             -> hidden          one encoder layer (ALBERT: one layer group)
    exit[l](hidden, attention_mask)              -> start, end      (B, T) each, padding set to MASK_FILL

Each step is a small ``nn.Module`` that wraps (never copies) the Hugging Face
submodules of the model, so the weights are the trained ones and the exporter
writes exactly these modules to ONNX. ALBERT's ``embedding_hidden_mapping_in``
(embedding size -> hidden size) belongs to the embeddings step; ALBERT slot
``l`` runs group ``layer_to_group(l, L, G)``, the formula of
``AlbertTransformer.forward``.

Integer inputs may be int32 (what TensorRT 8.x takes as engine inputs) or int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from elma.errors import ModelLoadError
from elma.model.multi_exit import MASK_FILL, MultiExitQA, encoder_token_types, exit_logits

# Encoders that can be cut after every layer: each layer maps (hidden, additive mask) -> hidden with nothing carried
# between layers. MiniLM checkpoints are model_type "bert". (embeddings module, projection or None, layer list) of
# the Hugging Face encoder; ALBERT (layer groups) is handled on its own.
LAYOUTS = {
    "bert": ("embeddings", None, "encoder.layer"),
    "roberta": ("embeddings", None, "encoder.layer"),
    "electra": ("embeddings", "embeddings_project", "encoder.layer"),  # the projection exists when E != H
    "mobilebert": ("embeddings", None, "encoder.layer"),
    "distilbert": ("embeddings", None, "transformer.layer"),
}
SUPPORTED_MODEL_TYPES = ("albert", *LAYOUTS)
# Why the others cannot be cut, for the message that refuses them before any training.
UNSUPPORTED_REASONS = {
    "deberta-v2": "DeBERTa's disentangled attention passes relative-position embeddings and buckets from the "
                  "encoder into every layer, so a layer is not a (hidden, mask) -> hidden step",
    "deberta": "DeBERTa's disentangled attention passes relative-position embeddings and buckets from the "
               "encoder into every layer, so a layer is not a (hidden, mask) -> hidden step",
}


def check_steps_supported(config) -> None:
    """Raise ``ModelLoadError`` at once (before any training) for an encoder that cannot be exported per layer.

    Args:
        config: a ``transformers`` config (only ``model_type`` and ALBERT's ``inner_group_num`` are read).
    """
    kind = config.model_type
    if kind == "albert":
        if config.inner_group_num != 1:
            raise ModelLoadError(f"ALBERT with inner_group_num={config.inner_group_num} has no per-layer steps; "
                                 f"ELMA supports inner_group_num=1 (every albert-* checkpoint)")
        return
    if kind not in LAYOUTS:
        why = UNSUPPORTED_REASONS.get(kind, "no per-layer layout is known for it")
        raise ModelLoadError(f"model_type {kind!r} cannot be exported per layer ({why}); "
                             f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")


def layer_to_group(layer: int, num_layers: int, num_groups: int) -> int:
    """Index of the layer group that runs in layer slot ``layer`` (0-based), as ``AlbertTransformer`` computes it."""
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer must be in 0..{num_layers - 1} (got {layer})")
    return int(layer / (num_layers / num_groups))


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive mask: 0 on tokens, ``MASK_FILL`` on padding.

    ``MASK_FILL`` (-1e4) instead of the dtype's minimum: it survives a float16
    conversion of the graph (finfo(float32).min would become -inf) and still
    gives padded keys exactly zero attention weight after the softmax's exp.
    """
    keep = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T)
    return (1.0 - keep) * MASK_FILL


class EmbeddingsStep(nn.Module):
    """(input_ids, token_type_ids) -> hidden (B, T, H); ALBERT's and ELECTRA's projection to the hidden size included.

    Every bundle's embeddings graph takes token types; encoders without them (DistilBERT) read them as 0 x types,
    so that the input stays in the graph, and encoders with one type (RoBERTa) get zeros.
    """

    def __init__(self, embeddings: nn.Module, projection: "nn.Module | None" = None, config=None,
                 takes_token_types: bool = True):
        super().__init__()
        self.embeddings = embeddings
        self.projection = projection
        self.config = config
        self.takes_token_types = takes_token_types

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        if self.takes_token_types:
            types = encoder_token_types(self.config, token_type_ids) if self.config is not None else token_type_ids
            hidden = self.embeddings(input_ids=input_ids, token_type_ids=types)  # (B, T, E)
        else:
            hidden = self.embeddings(input_ids=input_ids)
            hidden = hidden + (token_type_ids[..., None] * 0).to(hidden.dtype)  # keeps the graph's input; adds 0
        if self.projection is not None:
            hidden = self.projection(hidden)  # (B, T, H)
        return hidden


class LayerStep(nn.Module):
    """(hidden, attention_mask) -> hidden: one BERT layer, or one ALBERT layer group (shared weights)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.layer(hidden, additive_attention_mask(attention_mask, hidden.dtype))
        return out[0] if isinstance(out, tuple) else out  # transformers 4.x layers return tuples


class ExitStep(nn.Module):
    """(hidden, attention_mask) -> (start_logits, end_logits), each (B, T) with padding set to ``MASK_FILL``."""

    def __init__(self, head: nn.Linear, null_head: Optional[nn.Linear] = None):
        super().__init__()
        self.head = head
        self.null_head = null_head

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        start, end, _ = exit_logits(self.head, self.null_head, hidden, attention_mask)
        return start, end


class FusedStep(nn.Module):
    """The whole chain in one graph, returning the last exit's logits: the full-depth baseline.

    Only the last exit: that is what a conventional (no early exit) QA model
    computes, so benchmarks compare the per-layer path against an honest baseline.
    """

    def __init__(self, steps: "ModelSteps"):
        super().__init__()
        self.embeddings = steps.embeddings
        self.groups = nn.ModuleList(steps.groups)
        self.last_exit = steps.exits[-1]
        self.layer_groups = steps.layer_groups

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embeddings(input_ids, token_type_ids)
        for g in self.layer_groups:
            hidden = self.groups[g](hidden, attention_mask)
        return self.last_exit(hidden, attention_mask)


@dataclass
class ModelSteps:
    """The steps of one model. ``layer_groups[l]`` is the group run in slot ``l``."""

    model_type: str
    embeddings: EmbeddingsStep
    groups: List[LayerStep]  # one per distinct weight set: L for BERT, num_hidden_groups for ALBERT
    layer_groups: Tuple[int, ...]  # slot -> group index, length L
    exits: List[ExitStep]  # one per slot

    @property
    def num_layers(self) -> int:
        return len(self.layer_groups)

    def fused(self) -> FusedStep:
        return FusedStep(self).eval()

    @torch.no_grad()
    def run_all_exits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      token_type_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Chain every step; (L, B, T) start and end logits, as ``MultiExitQA.forward`` returns them."""
        hidden = self.embeddings(input_ids, token_type_ids)
        starts, ends = [], []
        for slot, g in enumerate(self.layer_groups):
            hidden = self.groups[g](hidden, attention_mask)
            start, end = self.exits[slot](hidden, attention_mask)
            starts.append(start)
            ends.append(end)
        return torch.stack(starts), torch.stack(ends)


def use_eager_attention(model: MultiExitQA) -> None:
    """Plain MatMul/Softmax attention (what the exporter writes; TensorRT fuses it) instead of SDPA."""
    if hasattr(model.encoder, "set_attn_implementation"):
        model.encoder.set_attn_implementation("eager")
    else:  # older transformers read the config at every call
        model.config._attn_implementation = "eager"


def _get(module: nn.Module, dotted: str):
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


def model_steps(model: MultiExitQA) -> ModelSteps:
    """Cut ``model`` into steps sharing its modules (and so its weights).

    Raises:
        ModelLoadError: for an encoder type without a step layout (``check_steps_supported``: DeBERTa, ...),
            or an ALBERT with more than one layer per group (its exits would not be one per slot).
    """
    config = model.config
    kind = config.model_type
    encoder = model.encoder
    num_layers = config.num_hidden_layers
    check_steps_supported(config)
    if kind == "albert":
        embeddings = EmbeddingsStep(encoder.embeddings, encoder.encoder.embedding_hidden_mapping_in)
        groups = [LayerStep(group) for group in encoder.encoder.albert_layer_groups]
        layer_groups = tuple(layer_to_group(i, num_layers, config.num_hidden_groups) for i in range(num_layers))
    else:
        emb_name, proj_name, layers_name = LAYOUTS[kind]
        embeddings = EmbeddingsStep(_get(encoder, emb_name), getattr(encoder, proj_name, None) if proj_name else None,
                                    config, model._takes_token_types)
        groups = [LayerStep(layer) for layer in _get(encoder, layers_name)]
        layer_groups = tuple(range(num_layers))
    null_heads = model.null_heads if model.null_heads is not None else [None] * len(model.exits)
    exits = [ExitStep(head, nh) for head, nh in zip(model.exits, null_heads)]
    assert len(exits) == num_layers, f"{len(exits)} exit heads for {num_layers} layers"
    # Inference only. Wrappers start in training mode, and an exporter that restores a wrapper's mode would
    # switch the wrapped dropout layers back on: every step is put in eval mode here, once.
    for step in [embeddings, *groups, *exits]:
        step.eval()
    return ModelSteps(kind, embeddings, groups, layer_groups, exits)
