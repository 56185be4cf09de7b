"""The one reader of an ELMA model folder's ``config.json`` (the encoder's config plus an ``elma`` block).

Used by the PyTorch model (``elma.model.multi_exit``), the export, the runtime's model-folder info and the
calibrated default's reader and writer (``elma.runtime.defaults``). Standard library only (device side):
reading a model folder's settings must not import torch.
"""

import json
from pathlib import Path
from typing import Any, Dict

from elma.errors import ModelLoadError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"


def read_model_config(folder) -> Dict[str, Any]:
    """The parsed ``config.json`` of the ELMA model folder ``folder``.

    Raises:
        ModelLoadError: no config.json (the folder is not a model folder), not JSON, or not an ELMA model
            config (an object with ``model_type`` and an ``elma`` block).
    """
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelLoadError(f"{folder}: no {CONFIG_NAME}; neither a bundle (manifest.json) nor an ELMA model "
                             f"folder ({CONFIG_NAME}, {WEIGHTS_NAME}, {TOKENIZER_NAME})") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or not isinstance(config.get("elma"), dict) or "model_type" not in config:
        raise ModelLoadError(f"{path}: not an ELMA model config (needs 'model_type' and an 'elma' block); "
                             f"train one with `elma train`")
    return config
