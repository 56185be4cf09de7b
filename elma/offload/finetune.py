"""``elma finetune``: train on the error records the server collected, publish only a model that is not worse.

    result = finetune(FinetuneConfig(errors_db="sqlite:///records.sqlite3", base_model="models/ref",
                                     output_dir="models/ref-ft1", train_files=("train.json",), heldout_file="heldout.json"))

1. **Training set from the records.** Each stored record becomes a SQuAD example whose label is the
   ``corrected_answer`` a person set, else the server's full-depth ``server_answer``; "" is a no-answer
   label. A record with no label yet, or whose label is not found in its context, is skipped (counted).
2. **Against forgetting**, ``original_per_error`` examples of the original training files are mixed in
   per record (a fixed-seed sample).
3. **Training** is the core trainer (``elma.train.trainer.train``) starting from the base model, with
   the base model's window geometry; it calibrates the new model's null thresholds on the held-out file.
4. **Gate.** Both models are scored on the same held-out file the same way (each exit's null threshold
   calibrated on it, then the official metric), and the new one is published (renamed into
   ``output_dir``) only when its full-depth F1 is at least the base model's plus ``min_f1_gain``.
   Otherwise nothing is published; the candidate stays in ``output_dir + ".work"`` for inspection.

Server side (torch, the ``train`` extra; SQLAlchemy for the records).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from elma.errors import DataError
from elma.fsutil import Output, check_outputs, write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """One ``elma finetune`` run; the command-line flags map onto these fields."""

    errors_db: str  # SQLAlchemy URL of the server's record store (elma-serve --db)
    base_model: str  # ELMA model folder the server runs
    output_dir: str  # where the new model is published; must not exist yet
    train_files: Tuple[str, ...]  # the original SQuAD training files, mixed in against forgetting
    heldout_file: str  # SQuAD file both models are scored on (never built from the records)
    original_per_error: float = 3.0  # original examples mixed in per error example
    max_steps: int = 200  # optimiser steps
    batch_size: int = 16  # windows per step
    learning_rate: float = 3e-5  # peak AdamW learning rate (small: a correction, not a new training)
    min_f1_gain: float = 0.0  # F1 points (0-100) the new model must gain at full depth to be published
    seed: int = 42
    threads: Optional[int] = None  # torch intra-op threads; default: torch's choice

    def __post_init__(self) -> None:
        if self.original_per_error < 0 or self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(f"original_per_error must be >= 0, max_steps and batch_size >= 1 (got "
                             f"{self.original_per_error}, {self.max_steps}, {self.batch_size})")
        if not self.train_files:
            raise ValueError("give the original training files (--train-file): they are mixed in against forgetting")


@dataclass(frozen=True)
class FinetuneResult:
    """What ``finetune`` did; serialised to ``finetune_report.json``."""

    published: bool  # the new model is in output_dir
    records: int  # records read from the store
    error_examples: int  # records that became training examples
    skipped_records: int  # no label yet, or the label is not in the context
    original_examples: int  # mixed in
    base_f1: float  # full-depth F1 on the held-out file (0-100)
    new_f1: float
    base_exits: List[Dict[str, Any]]  # official scores of every exit
    new_exits: List[Dict[str, Any]]
    train_steps: int
    candidate_dir: str  # where the new model was trained (output_dir when published)


def record_examples(rows: Sequence[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], int]:
    """SQuAD ``qas`` paragraphs from store rows: ([{"context", "qas": [...]}, ...], skipped)."""
    paragraphs, skipped = [], 0
    for row in rows:
        label = row.get("corrected_answer")
        if label is None:
            label = row.get("server_answer")
        if label is None:
            skipped += 1
            continue
        label = label.strip()
        context = row["context"]
        qa: Dict[str, Any] = {"id": f"err-{row['record_id']}", "question": row["question"]}
        if label == "":
            qa.update(answers=[], is_impossible=True)
        else:
            start = context.find(label)
            if start < 0:
                skipped += 1
                continue
            qa.update(answers=[{"text": label, "answer_start": start}], is_impossible=False)
        paragraphs.append({"context": context, "qas": [qa]})
    return paragraphs, skipped


def original_sample(train_files: Sequence[str], count: int, seed: int) -> List[Dict[str, Any]]:
    """``count`` examples of the original files (fixed-seed sample), as SQuAD paragraphs."""
    from elma.data.squad import load_many

    examples = load_many([Path(f) for f in train_files])
    chosen = random.Random(seed).sample(examples, min(count, len(examples)))
    return [{"context": ex.context, "qas": [{
        "id": f"orig-{ex.qid}", "question": ex.question, "is_impossible": ex.is_impossible,
        "answers": [{"text": a.text, "answer_start": a.answer_start} for a in ex.answers]}]} for ex in chosen]


def score_model(model, tokenizer, heldout) -> List[Dict[str, Any]]:
    """Every exit's official scores on ``heldout``, each exit's null threshold calibrated on it first."""
    from elma.predict import calibrate_null_thresholds, predict_all_exits, score_exits, with_null_thresholds

    results = predict_all_exits(model, tokenizer, heldout)
    return score_exits(with_null_thresholds(results, calibrate_null_thresholds(results, heldout)), heldout)


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Build the training set, train, compare, publish or refuse; see the module docstring.

    Raises:
        OutputExistsError: the output exists; DataError: the store has no usable record, or a file is missing or malformed.
    """
    from elma.data.squad import load_squad
    from elma.offload.server import RecordStore
    from elma.runtime.engine import model_folder_info

    out = Path(config.output_dir)
    work = Path(f"{config.output_dir}.work")
    check_outputs([Output(out, "-o", folder=True, hint="a published model is never replaced"),
                   Output(work, "-o", folder=True, hint="it holds a candidate an earlier run did not publish")],
                  None, inputs=[config.base_model, config.heldout_file, *config.train_files])
    info = model_folder_info(config.base_model)
    heldout = load_squad(Path(config.heldout_file))
    store = RecordStore(config.errors_db)
    try:
        rows = store.all()
    finally:
        store.close()
    errors, skipped = record_examples(rows)
    if not errors:
        raise DataError(f"no usable error records in {RecordStore.engine_url(config.errors_db)} ({len(rows)} records, "
                        f"{skipped} without a label in their context); devices upload them with `elma sync --upload`")
    originals = original_sample(config.train_files, round(config.original_per_error * len(errors)), config.seed)
    existed = work.exists()  # (empty: check_outputs refuses anything else)
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _train_and_publish(config, out, work, info, heldout, rows, errors, skipped, originals)
    except BaseException:  # nothing half-written: no candidate, no mixed training file, no folder we made
        for part in (list(work.iterdir()) if existed else [work]):
            if part.is_dir():
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink()
        raise


def _train_and_publish(config: FinetuneConfig, out: Path, work: Path, info, heldout, rows, errors, skipped,
                       originals) -> FinetuneResult:
    from elma.model.loading import load_model
    from elma.train.trainer import TrainConfig, train

    mixed = work / "finetune-train.json"
    write_json(mixed, {"version": "v2.0", "data": [{"title": "errors", "paragraphs": errors + originals}]})
    logger.info("%d error examples (%d records skipped) + %d original examples -> %s", len(errors), skipped,
                len(originals), mixed)

    w = info.windows
    candidate = work / "model"
    trained = train(TrainConfig(model=config.base_model, train_files=(str(mixed),), output_dir=str(candidate),
                                eval_file=config.heldout_file, max_seq_length=w.max_seq_length, doc_stride=w.doc_stride,
                                max_query_length=w.max_query_length, batch_size=config.batch_size,
                                learning_rate=config.learning_rate, max_steps=config.max_steps, seed=config.seed,
                                threads=config.threads, save_every=config.max_steps, log_every=max(1, config.max_steps // 10)))
    base_exits = score_model(*load_model(config.base_model), heldout)
    new_exits = score_model(*load_model(str(candidate)), heldout)
    base_f1, new_f1 = float(base_exits[-1]["f1"]), float(new_exits[-1]["f1"])
    publish = new_f1 >= base_f1 + config.min_f1_gain
    (candidate / "checkpoint.pt").unlink(missing_ok=True)  # optimizer state: not part of a published model
    if publish:
        os.replace(candidate, out)
    result = FinetuneResult(publish, len(rows), len(errors), skipped, len(originals), base_f1, new_f1, base_exits,
                            new_exits, trained.steps, str(out if publish else candidate))
    write_json((out if publish else work) / "finetune_report.json", {"config": asdict(config), **asdict(result)})
    if publish:
        shutil.rmtree(work)
    logger.info("full-depth F1 %.2f -> %.2f: %s", base_f1, new_f1, "published" if publish else "refused")
    return result
