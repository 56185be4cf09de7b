"""``elma-ask --split``: run to the split layer, answer or offload, and learn the split (``elma.offload.split``).

    asker = SplitAsker.open(runtime, client, "auto", state_path)     # or a fixed layer: SplitAsker.open(rt, client, 3)
    result, split = asker.ask(runtime, question, context)           # -> (OffloadResult, split played)

Under split ``s`` the runtime runs layers 1..s with its exit policy (``max_layer=s``); a question still unsolved
there goes through the offload client (queued first; deferred when the server does not answer in time); split ``L``
never offloads. With ``auto`` the split comes from the bandit, which then learns from what the question showed
(``observation``) and from the measured step times and offload round trip, and its state is saved (atomically)
after every question.

Device side: Python 3.6 and the standard library only.
"""

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Optional, Tuple, Union

from elma.errors import ElmaError
from elma.offload.split import CostModel, SplitBandit, load_state, observation, save_state

logger = logging.getLogger(__name__)

AUTO = "auto"


def parse_split(text: str) -> Union[str, int]:
    """``auto`` or a layer number (1-based) from ``--split``.

    Raises:
        ValueError: anything else.
    """
    if text == AUTO:
        return AUTO
    try:
        layer = int(text)
    except ValueError:
        raise ValueError(f"--split is auto or a layer number (got {text!r})") from None
    if layer < 1:
        raise ValueError(f"--split layer must be at least 1 (got {layer})")
    return layer


def model_fingerprint(path: Union[str, os.PathLike]) -> str:
    """16 hex digits naming a model: the sha256 of its bundle manifest (which holds every file's sha256), or of a
    model folder's ``config.json`` and the names and sizes of its files."""
    folder = Path(path)
    digest = hashlib.sha256()
    manifest = folder / "manifest.json"
    if manifest.is_file():
        digest.update(manifest.read_bytes())
    else:
        config = folder / "config.json"
        if config.is_file():
            digest.update(config.read_bytes())
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(f"{f.name}:{f.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def default_state_path(fingerprint: str) -> Path:
    """$ELMA_SPLIT_STATE, else ~/.local/share/elma/split/FINGERPRINT.json."""
    env = os.environ.get("ELMA_SPLIT_STATE")
    return Path(env) if env else Path.home() / ".local" / "share" / "elma" / "split" / (fingerprint + ".json")


class SplitAsker:
    """Answers with a fixed split, or a learnt one (``bandit`` set, saved to ``state_path`` after each question)."""

    def __init__(self, client, num_layers: int, split: Optional[int] = None, bandit: Optional[SplitBandit] = None,
                 state_path: Optional[Path] = None, fingerprint: str = ""):
        if (split is None) == (bandit is None):
            raise ValueError("give a fixed split or a bandit, not both or neither")
        if split is not None and not 1 <= split <= num_layers:
            raise ValueError(f"--split must be in 1..{num_layers} or auto (got {split})")
        self.client = client
        self.num_layers = num_layers
        self.split = split
        self.bandit = bandit
        self.state_path = state_path
        self.fingerprint = fingerprint

    @classmethod
    def open(cls, runtime, client, split: Union[str, int], state_path: Optional[Union[str, os.PathLike]] = None):
        """A fixed split, or (``auto``) the bandit saved for this model, a fresh one when there is none.

        Raises:
            ValueError: a split beyond the model's layers.
            SplitStateError: the saved state cannot be used (one line, with the fix).
        """
        L = runtime.num_layers
        if split != AUTO:
            return cls(client, L, split=int(split))
        fingerprint = model_fingerprint(runtime.info.path)
        path = Path(state_path) if state_path is not None else default_state_path(fingerprint)
        bandit = load_state(path, fingerprint, L)
        if bandit is None:
            bandit = SplitBandit(L, costs=CostModel(L, offload_ms=client.config.deadline_ms))
            logger.info("split bandit: starting afresh (%s)", path)
        return cls(client, L, bandit=bandit, state_path=path, fingerprint=fingerprint)

    @property
    def source(self) -> str:
        return "learnt" if self.bandit is not None else "fixed"

    def ask(self, runtime, question: str, context: str) -> Tuple[object, int]:
        """(``OffloadResult``, the split played) for one question; with a bandit, learn from it and save."""
        from elma.offload.client import OffloadResult

        split = self.split if self.bandit is None else self.bandit.choose()
        local = runtime.ask(question, context, max_layer=split)
        if split == self.num_layers:  # the device holds the full-depth answer: nothing to offload
            result = OffloadResult(local.text, local.no_answer, False, False, "", None, 0, 0.0, local.latency_ms, local)
        else:
            result = self.client.resolve(question, context, local)
        if self.bandit is not None:
            self.learn(split, local, result)
        return result, split

    def learn(self, split: int, local, result) -> None:
        """Update the bandit with what the question showed and what it cost, then save its state."""
        confidence = local.exit_confidence if math.isfinite(local.exit_confidence) else None
        if not local.unsolved or split == self.num_layers:
            seen = observation(split, self.num_layers, local.exit_layer, local.exit_layer, confidence)
        else:  # offloaded, or wanted to be (deferred): the server's time is in offload_ms either way
            seen = observation(split, self.num_layers, split, None, None)
        self.bandit.update(split, seen)
        went_out = result.offloaded or result.deferred
        self.bandit.costs.add(step_ms=local.layer_latency_ms, offload_ms=result.offload_ms if went_out else None)
        try:
            save_state(self.state_path, self.bandit, self.fingerprint)
        except OSError as err:
            raise ElmaError(f"{self.state_path}: cannot save the split state ({err.strerror or err}); check the "
                            f"folder, or pass --split-state FILE") from err
