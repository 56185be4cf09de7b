"""Where things live by default."""

import os
from pathlib import Path
from typing import Optional

REFERENCE_MODEL_NAME = "elma-minilm-l6-squad2"
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_model_dir() -> Path:
    """The shipped reference model (``models/`` of the checkout), or ``$ELMA_MODEL`` when set."""
    env = os.environ.get("ELMA_MODEL")
    return Path(env) if env else REPO_ROOT / "models" / REFERENCE_MODEL_NAME


def default_models_dir() -> Path:
    """Where ``elma update`` installs releases: ``$ELMA_MODELS_DIR``, else ``~/.local/share/elma/models``."""
    env = os.environ.get("ELMA_MODELS_DIR")
    return Path(env) if env else Path.home() / ".local" / "share" / "elma" / "models"


def installed_model() -> Optional[Path]:
    """``MODELS_DIR/current``, the release ``elma update`` installed, when there is one (the symlink, not its target,
    so that a long-running reader can notice a new release)."""
    current = default_models_dir() / "current"
    return current if current.is_dir() else None


def cache_dir() -> Path:
    """Where ELMA caches what it can rebuild (exported bundles, file hashes): ``$ELMA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/elma``, else ``~/.cache/elma``."""
    if os.environ.get("ELMA_CACHE_DIR"):
        return Path(os.environ["ELMA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "elma"
