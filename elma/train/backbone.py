"""What ``elma train MODEL`` accepts, resolved to a model and a tokenizer before anything is written.

MODEL is one of
- an encoder ``config.json`` (random init; the tokenizer from ``--tokenizer`` or its folder);
- an ELMA model folder (its ``config.json`` has an ``elma`` block): training continues from it;
- a Hugging Face folder of any encoder ``transformers`` loads (ALBERT, BERT, MiniLM, DistilBERT, RoBERTa,
  MobileBERT, ELECTRA; a ``...ForQuestionAnswering`` checkpoint gives its encoder), new exit heads on top;
- a Hugging Face model id (``albert-base-v2``, ``google/electra-small-discriminator``): fetched into the
  Hugging Face cache, or taken from it offline (``HF_HUB_OFFLINE=1``).

The family is checked against the per-layer export (``elma.model.steps.check_steps_supported``) from its
config alone, so that a model that would train but could not run on the device (DeBERTa) is refused at once.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Tuple

from elma.errors import ModelLoadError, UsageError
from elma.model.multi_exit import CONFIG_NAME, ExitConfig, MultiExitQA

logger = logging.getLogger(__name__)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What a backbone needs from the hub: config, weights, and whichever tokenizer files the family ships.
HUB_FILES = ["config.json", "*.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "spiece.model", "spm.model", "vocab.txt", "vocab.json", "merges.txt"]


def resolve_source(name: str, files=HUB_FILES) -> Path:
    """A local path for ``name``: the path itself if it exists, else the Hugging Face cache's copy of the model id.

    Raises:
        ModelLoadError: no such path, and no such model id reachable (offline and not cached, unknown id, network).
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    if not HUB_ID.match(name) or name.endswith(".json"):
        raise ModelLoadError(f"{name}: no such file or folder (and not a Hugging Face model id)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as err:
        raise ModelLoadError(f"{name}: a Hugging Face model id needs huggingface_hub (pip install 'elma[train]')") from err
    try:
        return Path(snapshot_download(name, allow_patterns=list(files)))
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"{name}: not a local folder, and not in the Hugging Face cache while the hub cannot be "
                             f"reached (offline); fetch it once with network (`hf download {name}`) or pass a "
                             f"local folder") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{name}: no such model on the Hugging Face hub (or it is private); check the id") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ModelLoadError(f"{name}: cannot fetch from the Hugging Face hub: {str(err).splitlines()[0]}") from None


def encoder_config_of(source: Path) -> Tuple[str, dict]:
    """(kind, config dict) of a model source: kind is ``json`` (bare config), ``elma`` or ``hf``."""
    if source.is_file():
        if source.suffix != ".json":
            raise ModelLoadError(f"{source}: not a model folder or encoder config.json")
        return "json", _read_json(source)
    cfg_path = source / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelLoadError(f"{source}: not a model folder (no {CONFIG_NAME}) or encoder config.json")
    cfg = _read_json(cfg_path)
    return ("elma" if "elma" in cfg else "hf"), cfg


def _read_json(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelLoadError(f"{path}: not an encoder config (no model_type)")
    return cfg


def check_family(cfg: dict, where: str) -> None:
    """Refuse, before any weights are loaded, a family that cannot be cut per layer (see ``elma.model.steps``)."""
    from transformers import AutoConfig

    from elma.model.steps import check_steps_supported

    cfg = dict(cfg)
    cfg.pop("elma", None)
    try:
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    except (ValueError, KeyError) as err:
        raise ModelLoadError(f"{where}: transformers does not know this encoder: {err}") from err
    try:
        check_steps_supported(config)
    except ModelLoadError as err:
        raise ModelLoadError(f"{where}: {err}; ELMA exits after every layer on the device, so it cannot "
                             f"train this model") from None


def build_model(config) -> Tuple[MultiExitQA, object]:
    """The model to train and its tokenizer, from whatever ``config.model`` names (see the module docstring).

    Args:
        config: a ``TrainConfig``.
    """
    name = config.model
    local = Path(name).expanduser().exists()
    if not local:  # a hub id: fetch (or find cached) its config alone first, so that a refusal costs no download
        kind, cfg = encoder_config_of(resolve_source(name, files=["config.json"]))
        check_family(cfg, name)
    source = resolve_source(name)
    kind, cfg = encoder_config_of(source)
    check_family(cfg, name)
    window = dict(max_seq_length=config.max_seq_length, doc_stride=config.doc_stride,
                  max_query_length=config.max_query_length, answerability_head=config.answerability_head)
    if kind == "json":
        from transformers import AutoConfig

        cfg = dict(cfg)
        encoder_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        model = MultiExitQA(encoder_config, ExitConfig(encoder_config.num_hidden_layers, **window))
        tok_src = config.tokenizer or source.parent
    elif kind == "elma":
        model = MultiExitQA.from_pretrained(source)
        tok_src = config.tokenizer or source
        if config.answerability_head and not model.exit_config.answerability_head:
            raise UsageError(f"{source}: this model has no answerability heads; --answerability-head is for new models")
    else:
        model = MultiExitQA.from_backbone(source, window)
        tok_src = config.tokenizer or source
    return model, load_any_tokenizer(tok_src)


def load_any_tokenizer(src):
    """``elma.tokenization.load_tokenizer``, or a folder with only ``vocab.txt`` / ``vocab.json`` + ``merges.txt``
    (BERT, RoBERTa checkpoints) through transformers' fast tokenizer, whose backend is the same object."""
    from elma.tokenization import load_tokenizer

    try:
        return load_tokenizer(src)
    except ModelLoadError:
        if not Path(src).is_dir():
            raise
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(src), use_fast=True)
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"{src}: no tokenizer.json or spiece.model, and transformers cannot build a fast "
                             f"tokenizer from it ({str(err).splitlines()[0]}); pass --tokenizer") from None
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"{src}: only a slow tokenizer; ELMA needs a fast one (tokenizer.json); pass --tokenizer")
    return tok.backend_tokenizer
