"""Health check of a release: the bundle loads with ``elma.runtime`` and answers canned questions as it says.

At publishing time ``expectations`` runs the bundle at full depth (policy ``none``, so no calibrated threshold
can make the answer depend on timing) and records each answer; the device runs ``check`` on the staged
release before it switches to it. A release that fails is marked bad by the updater and never retried.

Device side: Python 3.8; the runtime (onnxruntime or TensorRT) is imported when a check runs.
"""

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from elma.errors import ElmaError, UpdateError

logger = logging.getLogger(__name__)

POLICY = "none"  # full depth: the answer does not depend on an exit threshold
_PASSAGE = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
            "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
            "their leader Rollo, agreed to swear fealty to King Charles III of West Francia.")
DEFAULT_QUESTIONS: Tuple[Tuple[str, str], ...] = (
    ("Who was the leader of the Norse raiders?", _PASSAGE),
    ("Which region did the Normans give their name to?", _PASSAGE),
    ("Who did the raiders swear fealty to?", _PASSAGE),
)


def _answers(bundle: Path, questions: Sequence[Tuple[str, str]], backend: Optional[str]) -> List[Tuple[str, bool]]:
    from elma.runtime.engine import Runtime

    try:
        with Runtime.open(bundle, backend=backend, policy=POLICY) as rt:
            return [(a.text, bool(a.no_answer)) for a in (rt.ask(q, c) for q, c in questions)]
    except (ElmaError, ValueError, ImportError, OSError) as err:
        raise UpdateError(f"{bundle}: does not load or answer with elma.runtime ({type(err).__name__}: {err})") from err


def expectations(bundle: Path, questions: Sequence[Tuple[str, str]], backend: Optional[str] = None) -> List[Dict[str, Any]]:
    """The canned questions with the answers ``bundle`` gives (release metadata's ``health.checks``)."""
    answers = _answers(bundle, questions, backend)
    return [{"question": q, "context": c, "text": t, "no_answer": na} for (q, c), (t, na) in zip(questions, answers)]


def check(bundle: Path, health: Mapping[str, Any], backend: Optional[str] = None) -> None:
    """Run the release's canned questions on ``bundle``.

    Raises:
        UpdateError: the bundle does not load, or an answer differs from the one the release records.
    """
    if health.get("policy") != POLICY:
        raise UpdateError(f"health checks with policy {health.get('policy')!r} are not known to this elma "
                          f"(expected {POLICY!r}); upgrade elma")
    checks = list(health.get("checks", []))
    answers = _answers(bundle, [(c["question"], c["context"]) for c in checks], backend)
    for c, (text, no_answer) in zip(checks, answers):
        if text != c["text"] or no_answer != c["no_answer"]:
            want = "no answer" if c["no_answer"] else repr(c["text"])
            got = "no answer" if no_answer else repr(text)
            raise UpdateError(f"health check failed: {c['question']!r} answered {got}, the release says {want}")
    logger.info("health check passed: %d canned questions", len(checks))
