"""Where things live by default."""

from __future__ import annotations

import os
from pathlib import Path

REFERENCE_MODEL_NAME = "elma-minilm-l6-squad2"
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_model_dir() -> Path:
    """The shipped reference model (``models/`` of the checkout), or ``$ELMA_MODEL`` when set."""
    env = os.environ.get("ELMA_MODEL")
    return Path(env) if env else REPO_ROOT / "models" / REFERENCE_MODEL_NAME
