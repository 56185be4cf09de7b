"""``checkpoint.pt``: what a resumed run needs, loadable on any device, and the rule for which settings may change.

Keys (a checkpoint written before devices and processes were added has only the first six, and still resumes):

    model, optimizer, scheduler  state dicts (tensors saved from whatever device; loaded onto the CPU first)
    rng                          rank 0's CPU random state
    step                         optimiser steps done
    config                       ``asdict(TrainConfig)`` of the run
    rng_ranks                    every rank's ``device.rng_state`` (CPU, and CUDA when on a GPU)
    world_size                   processes of the run
    scaler                       the fp16 gradient scaler's state, or None
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

import torch

from elma.errors import UsageError
from elma.fsutil import atomic_write

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
# Settings that decide where and how fast a run goes, not where it ends: a resume may change them.
RUNTIME_FIELDS = frozenset({"device", "dataloader_workers"})


def check_resumable(saved: dict, config, path: Path) -> None:
    """Refuse a resume whose settings differ from the checkpoint's.

    A field the checkpoint's config does not have (it was written before the field existed) must be at its
    default, which is what the old code did; ``RUNTIME_FIELDS`` may differ.

    Raises:
        UsageError: naming the first differing settings.
    """
    current = asdict(config)
    defaults = {f.name: f.default for f in fields(config)}
    differ = []
    for name, value in current.items():
        if name in RUNTIME_FIELDS:
            continue
        was = saved[name] if name in saved else defaults[name]
        if _normal(was) != _normal(value):
            differ.append(f"{name}: {was!r} -> {value!r}")
    unknown = sorted(set(saved) - set(current))
    if unknown:
        differ.append(f"settings this version does not know: {', '.join(unknown)}")
    if differ:
        raise UsageError(f"{path}: was written with other settings ({'; '.join(differ[:3])}); "
                         f"resume with the same command")


def _normal(value):
    return tuple(value) if isinstance(value, list) else value


def save(path: Path, model, optimizer, scheduler, step: int, config, rng_ranks: list, scaler_state: Optional[dict]) -> None:
    """Write the checkpoint atomically (rank 0 only); tensors are saved as they are (any device)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng_ranks[0]["cpu"], "step": step, "config": asdict(config), "rng_ranks": rng_ranks,
             "world_size": len(rng_ranks), "scaler": scaler_state}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    logger.info("checkpoint at step %d -> %s", step, path)


def load(path: Path) -> dict:
    """The checkpoint with every tensor on the CPU (``map_location``): a GPU run resumes on a CPU and back."""
    return torch.load(path, map_location="cpu", weights_only=False)


def rank_rng(state: dict, rank: int, world_size: int) -> Optional[dict]:
    """The random state rank ``rank`` resumes with, or None (then it keeps its fresh seed and says so).

    Checkpoints of one process before this change hold only ``rng`` (the CPU state).
    """
    ranks = state.get("rng_ranks")
    if ranks is None:
        return {"cpu": state["rng"]} if rank == 0 else None
    if len(ranks) != world_size:
        logger.warning("checkpoint written by %d processes, resumed by %d: dropout draws differ from an "
                       "uninterrupted run", len(ranks), world_size)
        return ranks[0] if rank == 0 else None
    return ranks[rank]


def _read_weights(path: Path):
    """(weights, step, settings) of a run's checkpoint.

    Raises:
        ModelLoadError: the file is no checkpoint of ``elma train``.
    """
    from elma.errors import ModelLoadError

    try:
        state = load(path)
        return state["model"], int(state["step"]), state["config"]
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise ModelLoadError(f"{path}: not a checkpoint of `elma train` ({type(err).__name__}: {err})") from None


def model_from_checkpoint(path: Path):
    """The model of a training run's checkpoint, in eval mode, with its tokenizer and step: a snapshot of a run that
    is still going (``elma convert RUN/checkpoint.pt -o FOLDER``). Its exits carry no calibrated thresholds.

    Raises:
        ModelLoadError: the file is no checkpoint of ``elma train``, or the model it names cannot be built.
    """
    from dataclasses import replace

    from elma.errors import ModelLoadError
    from elma.train.backbone import build_model
    from elma.train.trainer import TrainConfig

    weights, step, saved = _read_weights(path)
    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: _normal(v) for k, v in saved.items() if k in known})
    model, tokenizer = build_model(config)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{path}: its weights do not fit the model its settings build "
                             f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    model.exit_config = replace(model.exit_config, null_thresholds=(), default_policy=None, calibration=None)
    return model.eval(), tokenizer, step


# -- weights-only snapshots: what survives a lost machine --------------------------------------------------------
SNAPSHOT_FORMAT = "elma-train-snapshot/1"


def save_snapshot(checkpoint_path: Path, target: Path, overwrite: bool = False) -> dict:
    """Write a weights-only snapshot of a run's checkpoint: the weights in float16, the step and the settings.

    About a third of the checkpoint's size (no AdamW moments, half-width weights), so that it can be committed
    and a run outlives the machine it trains on: ``elma train --resume-weights`` continues from it. Returns a
    summary (step, tensors, bytes).

    Raises:
        ModelLoadError: ``checkpoint_path`` is no checkpoint of ``elma train``.
    """
    weights, step, config = _read_weights(checkpoint_path)
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    snapshot = {"format": SNAPSHOT_FORMAT, "model": half, "step": step, "config": config}
    atomic_write(target, lambda tmp: torch.save(snapshot, tmp), overwrite=overwrite)
    return {"step": step, "tensors": len(half), "bytes": Path(target).stat().st_size}


def load_snapshot(path: Path) -> dict:
    """A snapshot written by ``save_snapshot``, weights back in float32.

    Raises:
        UsageError: the file is missing or is no snapshot (a full ``checkpoint.pt`` resumes with ``--resume``).
    """
    try:
        state = load(path)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise UsageError(f"{path}: cannot read a snapshot ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
        hint = " (a full checkpoint: put it in -o and pass --resume)" if isinstance(state, dict) and "optimizer" in state else ""
        raise UsageError(f"{path}: not a snapshot of `elma snapshot`{hint}")
    state["model"] = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    return state


def restore_snapshot(state: dict, model, scheduler, path: Path) -> int:
    """Load a snapshot's weights into ``model`` and move ``scheduler`` to its step; returns that step.

    The AdamW moments start again from zero (they are what the snapshot leaves out); the learning rate, the batch
    order (a function of seed, epoch and step) and the schedule's end are those of the uninterrupted run. The
    caller has checked the snapshot's settings (``check_resumable``), before reading the training data.

    Raises:
        UsageError: its weights do not fit the model.
    """
    import warnings

    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise UsageError(f"{path}: its weights do not fit the model these settings build "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    step = int(state["step"])
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": moving it, not training
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(step):
            scheduler.step()
    logger.warning("resumed from the weights-only snapshot %s at step %d: AdamW moments start from zero", path, step)
    return step
