"""Refit a model folder's per-exit null-score thresholds on a labelled file (``elma fit-null``).

The trainer fits them on its ``--eval-file``. When that file's unanswerable questions are mostly synthetic twins,
the thresholds may suit the twins and let real, adversarial unanswerable questions through; refitting on real
questions of held-out articles is the remedy to try, weights untouched. Measure first whether it carries over to
unseen questions (``benchmarks/null_threshold_transfer.py``: for v3 it did not). A calibrated default policy was
certified with the old thresholds (its F1 risk depends on them), so refitting drops it, and only when the user
says so.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from elma.errors import DataError, OutputExistsError


def refit_null_thresholds(model_dir, data, overwrite: bool = False) -> Tuple[List[float], List[float], List[dict]]:
    """Fit each exit's threshold on ``data`` (the official best-F1 search) and store it in config.json.

    Returns:
        (old thresholds, new thresholds, every exit's official scores on ``data`` with the new ones).

    Raises:
        ModelLoadError: not an ELMA model folder.
        DataError: ``data`` has no answerable or no unanswerable question (no threshold can be fitted).
        OutputExistsError: the folder holds a calibrated default policy and ``overwrite`` is false.
    """
    from elma.data.squad import load_squad
    from elma.fsutil import atomic_write
    from elma.model.loading import load_model
    from elma.predict import calibrate_null_thresholds, predict_all_exits, score_exits, with_null_thresholds
    from elma.runtime.model_config import CONFIG_NAME, read_model_config

    folder = Path(model_dir)
    config: Dict[str, Any] = read_model_config(folder)
    elma = config["elma"]
    if elma.get("default_policy") is not None and not overwrite:
        raise OutputExistsError(
            f"{folder / CONFIG_NAME}: holds a default policy ({elma['default_policy']}) certified with its current "
            f"null thresholds; pass --overwrite to refit them and drop it (then run `elma calibrate` again)")
    examples = load_squad(Path(data))
    unanswerable = sum(1 for ex in examples if not ex.answer_texts)
    if unanswerable == 0 or unanswerable == len(examples):
        raise DataError(f"{data}: {unanswerable} of {len(examples)} questions unanswerable; fitting a no-answer "
                        f"threshold needs both kinds")
    model, tokenizer = load_model(str(folder))
    old = [float(t) for t in (model.exit_config.null_thresholds or (0.0,) * model.num_exits)]
    results = predict_all_exits(model, tokenizer, examples)
    new = calibrate_null_thresholds(results, examples)
    elma["null_thresholds"] = new
    elma.pop("default_policy", None)
    elma.pop("calibration", None)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"  # as MultiExitQA.save_pretrained writes it
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return old, new, score_exits(with_null_thresholds(results, new), examples)

