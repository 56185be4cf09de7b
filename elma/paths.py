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


def cache_dir() -> Path:
    """Where ELMA caches what it can rebuild (exported bundles, file hashes): ``$ELMA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/elma``, else ``~/.cache/elma``."""
    if os.environ.get("ELMA_CACHE_DIR"):
        return Path(os.environ["ELMA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "elma"
