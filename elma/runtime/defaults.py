"""The calibrated default exit policy: where it is stored, the one reader, the one writer for model folders.

Stored in two places, read here only:

* a model folder: ``config.json``, ``elma.default_policy`` (a spec such as ``"entropy:2.37305,1.40823"``) and
  ``elma.calibration`` (how it was certified: risk, delta, epsilon, n, data file, the weights' sha256);
  written by ``write_default_policy`` (``elma calibrate BUNDLE --model-dir MODEL`` calls it);
* a bundle: ``manifest.json``, ``exit_thresholds.default`` (and ``exit_thresholds.calibration``); ``elma export``
  copies the model folder's there (``manifest_entry``), ``elma calibrate BUNDLE`` writes its own.

Every command that runs a model without ``--policy`` (``elma-ask``, ``elma-bench``, ``elma-energy``, the
offload client, ``elma demo``) gets its policy through the runtime, which asks ``from_manifest`` or
``from_model_config``; ``default_policy(path)`` is the same answer for a path. Nothing stored means full
depth, said as ``none (no calibrated default)``. A default whose calibration names other weights than the
folder's is ignored (``SOURCE_STALE``): retraining or replacing the weights invalidates it.

Standard library and ``elma.runtime.policies`` only (device side, Python 3.8).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from elma.errors import BundleError, ModelLoadError, OutputExistsError
from elma.runtime.model_config import CONFIG_NAME, WEIGHTS_NAME, read_model_config

SOURCE_CALIBRATED = "calibrated default"
# a default stored with ``epsilon: null``: picked on a calibration set, but with no statistical guarantee
SOURCE_UNCERTIFIED = "default, calibrated without a guarantee"
SOURCE_NONE = "no calibrated default"
SOURCE_STALE = "no calibrated default: the stored one was calibrated for other weights, run `elma calibrate` again"
SOURCE_REQUESTED = "requested"  # the caller named the policy (--policy, policy=...)
FULL_DEPTH = "none"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class StoredDefault:
    """A model's default exit policy and where it comes from."""

    spec: str  # policy spec; "none" (full depth) when nothing usable is stored
    source: str  # SOURCE_CALIBRATED, SOURCE_UNCERTIFIED, SOURCE_NONE or SOURCE_STALE
    calibration: Optional[Dict[str, Any]] = None  # how it was certified, as stored (None when nothing is)

    def describe(self) -> str:
        return describe_policy(self.spec, self.source)


def describe_policy(spec: str, source: str) -> str:
    """What the commands print: ``entropy:2.37305,1.40823 (calibrated default)``."""
    return f"{spec} ({source})" if source else spec


def _stored_source(calibration: Optional[Mapping[str, Any]]) -> str:
    """A stored default is certified unless its calibration says ``epsilon: null`` (no guarantee)."""
    if isinstance(calibration, Mapping) and "epsilon" in calibration and calibration["epsilon"] is None:
        return SOURCE_UNCERTIFIED
    return SOURCE_CALIBRATED


def from_model_config(config: Mapping[str, Any], folder: Path, check_weights: bool = True) -> StoredDefault:
    """The default of a model folder from its parsed ``config.json``.

    Args:
        config: the parsed config.json (with its ``elma`` block).
        folder: the model folder (for messages and the weights check).
        check_weights: when the calibration records ``weights_sha256``, compare it with the folder's weights
            (hashed once and remembered, ``elma.runtime.filehash``) and ignore a default made for other weights.

    Raises:
        ModelLoadError: ``default_policy`` or ``calibration`` of the wrong type.
    """
    elma = config.get("elma") or {}
    spec, calibration = elma.get("default_policy"), elma.get("calibration")
    where = Path(folder) / CONFIG_NAME
    if spec is None:
        return StoredDefault(FULL_DEPTH, SOURCE_NONE)
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"{where}: elma.default_policy must be a policy spec string (got {spec!r}); "
                             f"run `elma calibrate` again")
    if calibration is not None and not isinstance(calibration, dict):
        raise ModelLoadError(f"{where}: elma.calibration must be an object (got {type(calibration).__name__})")
    expected = (calibration or {}).get("weights_sha256")
    if check_weights and isinstance(expected, str) and (Path(folder) / WEIGHTS_NAME).is_file():
        from elma.runtime.filehash import sha256_memo

        if sha256_memo(Path(folder) / WEIGHTS_NAME) != expected:
            return StoredDefault(FULL_DEPTH, SOURCE_STALE, calibration)
    return StoredDefault(spec.strip(), _stored_source(calibration), calibration)


def from_manifest(manifest: Mapping[str, Any], root: Path) -> StoredDefault:
    """The default of a bundle from its parsed manifest (``exit_thresholds``).

    Raises:
        BundleError: ``exit_thresholds`` or its ``default`` of the wrong type.
    """
    entry = manifest.get("exit_thresholds")
    if entry is None:
        return StoredDefault(FULL_DEPTH, SOURCE_NONE)
    where = Path(root) / MANIFEST_NAME
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: 'exit_thresholds' must be an object (got {type(entry).__name__}); "
                          f"run `elma calibrate` again")
    spec = entry.get("default")
    if spec is None:
        return StoredDefault(FULL_DEPTH, SOURCE_NONE)
    if not isinstance(spec, str) or not spec.strip():
        raise BundleError(f"{where}: exit_thresholds.default must be a policy spec string (got {spec!r}); "
                          f"run `elma calibrate` again")
    calibration = entry.get("calibration")
    if not isinstance(calibration, dict):  # `elma calibrate BUNDLE` keeps its figures beside the default
        calibration = {k: v for k, v in entry.items() if k not in ("default", "policies")} or None
    return StoredDefault(spec.strip(), _stored_source(calibration), calibration)


def read_default(path: Union[str, os.PathLike]) -> StoredDefault:
    """The default of a bundle (manifest.json) or a model folder (config.json) at ``path``.

    Raises:
        BundleError, ModelLoadError: the path is neither, or its stored default is malformed.
    """
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        from elma.runtime.bundle import read_manifest

        return from_manifest(read_manifest(path), path)
    return from_model_config(read_model_config(path), path)


def default_policy(path: Union[str, os.PathLike]) -> Tuple[str, str]:
    """``(spec, source)`` of the policy a bundle or model folder runs when none is given, e.g.
    ``("entropy:2.37305,1.40823", "calibrated default")`` or ``("none", "no calibrated default")``."""
    stored = read_default(path)
    return stored.spec, stored.source


def manifest_entry(stored: StoredDefault) -> Optional[Dict[str, Any]]:
    """The bundle manifest's ``exit_thresholds`` for a model folder's default (``elma export``); None if it has none."""
    if stored.source not in (SOURCE_CALIBRATED, SOURCE_UNCERTIFIED):
        return None
    return {"default": stored.spec, "calibration": stored.calibration, "from": "model config.json (elma export)"}


def write_default_policy(model_dir: Union[str, os.PathLike], spec: str, calibration: Optional[Mapping[str, Any]] = None,
                         overwrite: bool = False) -> StoredDefault:
    """Store ``spec`` as the model folder's calibrated default policy, in its config.json, atomically.

    Args:
        model_dir: an ELMA model folder (config.json with an ``elma`` block, model.safetensors).
        spec: the policy spec (``"entropy:2.37305,1.40823"``, with skim stages ``"entropy:2.4,2.9+skim:2,0.001"``;
            ``"none"`` when calibration certified nothing faster than full depth).
        calibration: how it was certified, JSON values only (e.g. risk, delta, epsilon, n, data). The sha256 of
            the folder's weights is added as ``weights_sha256``: the default holds for these weights only.
        overwrite: replace a default already stored (without it, that is refused).

    Returns:
        What ``read_default(model_dir)`` now returns.

    Raises:
        ModelLoadError: not an ELMA model folder.
        ValueError: a spec that does not parse or names a layer the model lacks, a calibration that is not a
            JSON object, or one whose ``weights_sha256`` is not these weights'.
        OutputExistsError: a default is stored and ``overwrite`` is false.
    """
    from elma.fsutil import atomic_write
    from elma.runtime.filehash import sha256_memo
    from elma.runtime.policies import StaticPolicy, parse_policy

    folder = Path(model_dir)
    config = read_model_config(folder)
    if not isinstance(spec, str):
        raise ValueError(f"the default policy must be a spec string (got {type(spec).__name__})")
    policy = parse_policy(spec)
    layers = config.get("num_hidden_layers")
    base = policy.exit_policy
    if isinstance(base, StaticPolicy) and isinstance(layers, int) and base.layer > layers:
        raise ValueError(f"static exit layer {base.layer} is beyond the model's {layers} layers")
    for stage in policy.skim_stages:  # a skimming default (elma calibrate --skim-layers) needs layers after each stage
        if isinstance(layers, int) and stage.layer >= layers:
            raise ValueError(f"skim after layer {stage.layer} leaves no layer to run (the model has {layers} layers)")
    if calibration is not None and not isinstance(calibration, Mapping):
        raise ValueError(f"calibration must be a mapping of JSON values (got {type(calibration).__name__})")
    info: Dict[str, Any] = dict(calibration or {})
    try:
        json.dumps(info, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"calibration must hold JSON values only ({err})") from err
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{weights}: missing; a model folder needs {WEIGHTS_NAME}")
    digest = sha256_memo(weights)
    if info.setdefault("weights_sha256", digest) != digest:
        raise ValueError(f"the calibration was made for weights {str(info['weights_sha256'])[:12]}..., {weights} holds "
                         f"{digest[:12]}...; calibrate this model")
    elma = config["elma"]
    if elma.get("default_policy") is not None and not overwrite:
        raise OutputExistsError(f"{folder / CONFIG_NAME}: holds a calibrated default policy already "
                                f"({elma['default_policy']}); pass --overwrite to replace it")
    elma["default_policy"] = spec.strip()
    elma["calibration"] = info
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"  # as MultiExitQA.save_pretrained writes it
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return from_model_config(config, folder)
