"""A Hugging Face encoder with one extractive-QA exit head after every layer.

``MultiExitQA`` composes (never forks) a ``transformers`` encoder: ALBERT with
its one shared layer group, BERT, MiniLM, ... A forward pass returns the
start/end logits of every exit; the model holds no inference policy and no
counters (those live in the runtime).

On disk a model is a folder: ``config.json`` (the encoder's own config plus an
``elma`` block), ``model.safetensors`` and the tokenizer (``tokenizer.json``).
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from elma.errors import ModelLoadError
from elma.fsutil import atomic_write
from elma.runtime.model_config import CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME, read_model_config

__all__ = ["CONFIG_NAME", "TOKENIZER_NAME", "WEIGHTS_NAME", "ExitConfig", "MultiExitQA", "read_model_config"]
MASK_FILL = -1e4  # fp16-safe stand-in for -inf on padded positions


@dataclass(frozen=True)
class ExitConfig:
    """What ELMA adds to the encoder config (stored under the ``elma`` key of config.json)."""

    num_exits: int  # one exit per encoder layer
    # Per exit: predict no answer when null_score - best_span_score exceeds it (HF's
    # null_score_diff_threshold); calibrated on held-out training data. Empty means all 0.
    null_thresholds: Tuple[float, ...] = ()
    max_seq_length: int = 384  # window geometry the model was trained with
    doc_stride: int = 128
    max_query_length: int = 64
    # A second head per exit, Linear(hidden, 1) on the CLS state: an answerability logit (> 0 leans to "no
    # answer") added to CLS's start and end logits, so the null score reads it and exported graphs keep their
    # two outputs. Trained with the span loss and, in `elma train`, a binary loss on the has-answer label.
    answerability_head: bool = False
    # Calibrated default exit policy, a spec such as "entropy:2.37305,1.40823" ("none": calibrated, full depth);
    # None: not calibrated, the runtime runs full depth. Written by ``elma.runtime.defaults.write_default_policy``,
    # read by ``elma.runtime.defaults.default_policy``; ``elma export`` carries it into the bundle manifest.
    default_policy: Optional[str] = None
    # How default_policy was certified (risk, delta, epsilon, n, data file, weights_sha256, ...); JSON values.
    calibration: Optional[Dict[str, Any]] = None


class ExitLogits(NamedTuple):
    start: torch.Tensor  # (L, B, T), padding set to MASK_FILL
    end: torch.Tensor  # (L, B, T)
    null: Optional[torch.Tensor]  # (L, B) answerability logits, None without answerability heads


def exit_logits(head: nn.Linear, null_head: Optional[nn.Linear], hidden: torch.Tensor,
                attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One exit: (B, T, H) hidden states -> start, end (B, T) and the answerability logit (B,) or None.

    The one definition of an exit's output, shared by the model and its exported steps.
    """
    logits = head(hidden)  # (B, T, 2)
    start, end = logits[..., 0], logits[..., 1]
    null = None
    if null_head is not None:
        null_col = null_head(hidden[:, :1, :]).squeeze(-1)  # (B, 1), read from CLS
        start = torch.cat([start[:, :1] + null_col, start[:, 1:]], dim=1)
        end = torch.cat([end[:, :1] + null_col, end[:, 1:]], dim=1)
        null = null_col.squeeze(-1)
    pad = attention_mask == 0  # (B, T)
    return start.masked_fill(pad, MASK_FILL), end.masked_fill(pad, MASK_FILL), null


class MultiExitQA(nn.Module):
    """Encoder + one ``Linear(hidden, 2)`` QA head per layer (and, optionally, an answerability head).

    Args:
        encoder_config: a ``transformers`` config (``AlbertConfig``, ``BertConfig``, ...).
        exit_config: ELMA's settings; defaults to one exit per layer.
        encoder: an already built (e.g. pretrained) encoder; built from config if None.
    """

    def __init__(self, encoder_config: PretrainedConfig, exit_config: Optional[ExitConfig] = None,
                 encoder: Optional[nn.Module] = None):
        super().__init__()
        n_layers = encoder_config.num_hidden_layers
        self.exit_config = exit_config or ExitConfig(num_exits=n_layers)
        if self.exit_config.null_thresholds and len(self.exit_config.null_thresholds) != n_layers:
            raise ValueError(f"null_thresholds needs one value per exit ({n_layers})")
        if self.exit_config.num_exits != n_layers:
            raise ValueError(f"num_exits must equal num_hidden_layers ({n_layers}), got {self.exit_config.num_exits}")
        self.encoder = encoder if encoder is not None else AutoModel.from_config(encoder_config, **_no_pooler(encoder_config))
        self.config = self.encoder.config
        # DistilBERT takes no token types; RoBERTa has one (type_vocab_size 1): see encoder_token_types
        self._takes_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self.exits = nn.ModuleList(nn.Linear(self.config.hidden_size, 2) for _ in range(n_layers))
        self.null_heads = (nn.ModuleList(nn.Linear(self.config.hidden_size, 1) for _ in range(n_layers))
                           if self.exit_config.answerability_head else None)
        for head in [*self.exits, *(self.null_heads or [])]:
            nn.init.normal_(head.weight, std=self.config.initializer_range)
            nn.init.zeros_(head.bias)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits of every exit.

        Args:
            input_ids, attention_mask, token_type_ids: (B, T) integer tensors.

        Returns:
            start_logits, end_logits: (L, B, T) float tensors, padded positions set to ``MASK_FILL``.
        """
        out = self.all_exits(input_ids, attention_mask, token_type_ids)
        return out.start, out.end

    def all_exits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  token_type_ids: Optional[torch.Tensor] = None) -> ExitLogits:
        """Like ``forward``, plus the answerability logits (what training needs)."""
        types = {}
        if self._takes_token_types:
            types["token_type_ids"] = encoder_token_types(self.config, token_type_ids)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                           return_dict=True, **types)
        hidden = out.hidden_states[1:]  # L tensors of (B, T, H); [0] is the embedding output
        assert len(hidden) == self.num_exits, f"encoder gave {len(hidden)} layers, expected {self.num_exits}"
        null_heads = self.null_heads if self.null_heads is not None else [None] * self.num_exits
        parts = [exit_logits(head, nh, h, attention_mask) for head, nh, h in zip(self.exits, null_heads, hidden)]
        start = torch.stack([p[0] for p in parts])
        end = torch.stack([p[1] for p in parts])
        null = torch.stack([p[2] for p in parts]) if self.null_heads is not None else None
        return ExitLogits(start, end, null)

    # ---- persistence -------------------------------------------------------------------------

    @classmethod
    def from_backbone(cls, path: os.PathLike, exit_config_kwargs: Optional[dict] = None) -> "MultiExitQA":
        """New exit heads on top of a pretrained Hugging Face encoder folder (config.json + weights)."""
        try:
            encoder = AutoModel.from_pretrained(str(path), **_no_pooler(AutoConfig.from_pretrained(str(path))))
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{path}: cannot load a pretrained encoder: {err}") from err
        exit_config = ExitConfig(num_exits=encoder.config.num_hidden_layers, **(exit_config_kwargs or {}))
        return cls(encoder.config, exit_config, encoder=encoder)

    @classmethod
    def from_pretrained(cls, path: os.PathLike, dtype: torch.dtype = torch.float32) -> "MultiExitQA":
        """Load a folder written by ``save_pretrained``.

        The weights are copied one tensor at a time from the safetensors file into the model's own parameters
        (converted to their dtype on the copy), so loading holds the model plus one tensor: not the file's
        whole state dict beside the model, nor an fp32 copy of an fp16 file (+216 MB on MiniLM-L6 before).
        """
        path = Path(path)
        config_dict = read_model_config(path)
        elma = config_dict.pop("elma")
        encoder_config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        elma["null_thresholds"] = tuple(elma.get("null_thresholds", ()))
        model = cls(encoder_config, ExitConfig(**elma))
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise ModelLoadError(f"{weights}: missing; a model folder needs {WEIGHTS_NAME}")
        _load_weights(model, weights)
        return model.to(dtype).eval()

    def save_pretrained(self, path: os.PathLike, dtype: torch.dtype = torch.float32,
                        exit_config: Optional[ExitConfig] = None) -> None:
        """Write config.json and model.safetensors atomically (temporary files, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        config["elma"] = asdict(exit_config or self.exit_config)
        # ALBERT shares one layer's tensors across slots; safetensors refuses shared storage, so clone.
        state = {k: v.detach().to(dtype).contiguous().clone() for k, v in self.state_dict().items()}
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        atomic_write(path / CONFIG_NAME,
                     lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))


def _no_pooler(config: PretrainedConfig) -> dict:
    """``add_pooling_layer=False`` for the encoders that have a pooler (BERT, ALBERT, RoBERTa, MobileBERT); QA never
    reads it. ELECTRA, DistilBERT and DeBERTa have none and refuse the argument."""
    cls = AutoModel._model_mapping[type(config)]
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}


def encoder_token_types(config: PretrainedConfig, token_type_ids: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Token types as the encoder takes them: all 0 for encoders with fewer than two types (RoBERTa: 1)."""
    if token_type_ids is not None and getattr(config, "type_vocab_size", 2) < 2:
        return torch.zeros_like(token_type_ids)
    return token_type_ids


def _load_weights(model: nn.Module, weights: Path) -> None:
    """Copy the tensors of the safetensors file ``weights`` into ``model``'s parameters and buffers, in place.

    Raises:
        ModelLoadError: the file is not safetensors, or its names or shapes are not the model's.
    """
    from safetensors import SafetensorError, safe_open

    target = model.state_dict(keep_vars=True)  # name -> the model's own tensors (no copies)
    try:
        with safe_open(str(weights), framework="pt") as f, torch.no_grad():
            names = set(f.keys())
            missing, unexpected = sorted(set(target) - names), sorted(names - set(target))
            if missing or unexpected:
                raise ModelLoadError(f"{weights}: does not match {CONFIG_NAME} "
                                     f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
            for name in sorted(names):
                tensor = f.get_tensor(name)
                if tensor.shape != target[name].shape:
                    raise ModelLoadError(f"{weights}: does not match {CONFIG_NAME}: {name} has shape "
                                         f"{tuple(tensor.shape)}, the model {tuple(target[name].shape)}")
                target[name].copy_(tensor)
    except SafetensorError as err:
        raise ModelLoadError(f"{weights}: not a safetensors file ({err})") from err
