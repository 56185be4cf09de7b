"""Load an ELMA model folder with its tokenizer (PyTorch reference path)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from elma.errors import ModelLoadError
from elma.model.multi_exit import MultiExitQA
from elma.paths import default_model_dir
from elma.tokenization import load_tokenizer


def load_model(path: Optional[str] = None) -> Tuple[MultiExitQA, object]:
    """The model and tokenizer in ``path`` (default: the shipped reference model)."""
    folder = Path(path) if path else default_model_dir()
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such model folder; pass one trained with `elma train`")
    return MultiExitQA.from_pretrained(folder), load_tokenizer(folder)
