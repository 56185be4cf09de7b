"""The official SQuAD 2.0 metric, re-implemented with the standard library only.

Gives the same numbers as the official ``evaluate-v2.0.py`` script (same keys,
same order, same floating-point arithmetic in the same order):

* answers are normalised (lower case, ASCII punctuation removed, the articles
  ``a``/``an``/``the`` removed, whitespace collapsed) before comparison;
* a question's score is the maximum over its gold answers; gold answers that
  normalise to nothing are dropped and an unanswerable question is scored
  against ``['']`` (so the empty prediction is the right one);
* ``best_exact``/``best_f1`` come from the official ``find_best_thresh`` walk
  over the questions sorted by no-answer probability (a stable sort, so ties
  keep the order of the ``na_probs`` mapping, as with the official JSON file).

One deliberate difference: the official script prints "Missing prediction for
..." and then crashes (KeyError) on the HasAns/NoAns split when a prediction is
missing. Here questions without a prediction are left out of every number
(totals, splits and the starting score of the best-threshold walk) and one
warning gives their count. With a prediction for every question the results are
identical to the official script.
"""

import collections
import logging
import math
import re
import string
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from elma.errors import DataError

logger = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)

PathLike = Union[str, Path]


# --------------------------------------------------------------------------- #
# Per-answer scores
# --------------------------------------------------------------------------- #
def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop articles, collapse whitespace (official order)."""
    text = s.lower()
    text = text.translate(_DELETE_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(s: str) -> List[str]:
    if not s:
        return []
    return normalize_answer(s).split()


def _f1_tokens(gold_toks: List[str], pred_toks: List[str]) -> float:
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # An unanswerable question: right only if both are empty.
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 if both answers normalise to the same string, else 0."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Token-level F1 over normalised tokens (bag of words, with multiplicity)."""
    return _f1_tokens(_tokens(a_gold), _tokens(a_pred))


def question_f1(answers: List[str], prediction: str) -> float:
    """One question's F1 (0-1) as the official script scores it: the best over the gold ``answers`` that normalise
    to something, or against ``['']`` when none does (an unanswerable question: right only if the prediction is
    empty too). The dataset F1 is 100 times the mean of these."""
    golds = [n for n in (normalize_answer(a) for a in answers) if n] or [""]
    pred_toks = normalize_answer(prediction).split()
    return float(max(_f1_tokens(g.split(), pred_toks) for g in golds))


# --------------------------------------------------------------------------- #
# Whole-dataset scores
# --------------------------------------------------------------------------- #
def _raw_scores(
    gold: Dict[str, List[str]], preds: Dict[str, str]
) -> Tuple["collections.OrderedDict[str, float]", "collections.OrderedDict[str, float]", List[str]]:
    """Exact and F1 per question (gold order), and the ids with no prediction."""
    exact_scores: "collections.OrderedDict[str, float]" = collections.OrderedDict()
    f1_scores: "collections.OrderedDict[str, float]" = collections.OrderedDict()
    missing: List[str] = []
    for qid, answers in gold.items():
        if qid not in preds:
            missing.append(qid)
            continue
        # Same as max(compute_exact(a, pred)) / max(compute_f1(a, pred)) over the
        # gold answers that normalise to something (else ['']), but each string
        # is normalised once.
        golds = [n for n in (normalize_answer(a) for a in answers) if n] or [""]
        pred = normalize_answer(preds[qid])
        pred_toks = pred.split()
        exact_scores[qid] = max(int(g == pred) for g in golds)
        f1_scores[qid] = max(_f1_tokens(g.split(), pred_toks) for g in golds)
    return exact_scores, f1_scores, missing


def _apply_no_ans_threshold(
    scores: Dict[str, float], na_probs: Dict[str, float], has_ans: Dict[str, bool], thresh: float
) -> "collections.OrderedDict[str, float]":
    """Where the no-answer probability beats the threshold, the model says "no answer"."""
    out: "collections.OrderedDict[str, float]" = collections.OrderedDict()
    for qid, s in scores.items():
        if na_probs[qid] > thresh:
            out[qid] = float(not has_ans[qid])
        else:
            out[qid] = s
    return out


def _eval_dict(
    exact: Dict[str, float], f1: Dict[str, float], qids: List[str]
) -> "collections.OrderedDict[str, float]":
    total = len(qids)
    return collections.OrderedDict(
        [
            ("exact", 100.0 * sum(exact[k] for k in qids) / total),
            ("f1", 100.0 * sum(f1[k] for k in qids) / total),
            ("total", total),
        ]
    )


def _best_thresh(
    preds: Dict[str, str], scores: Dict[str, float], na_probs: Dict[str, float], has_ans: Dict[str, bool]
) -> Tuple[float, float]:
    """The official walk: start from "abstain everywhere", answer in order of na_prob."""
    # Abstaining everywhere gets every (scored) unanswerable question right.
    cur_score = sum(1 for k in scores if not has_ans[k])
    best_score = cur_score
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):  # stable: ties keep mapping order
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        elif preds[qid]:
            diff = -1  # answering an unanswerable question with text loses its point
        else:
            diff = 0
        cur_score += diff
        if cur_score > best_score:  # strictly better only: ties keep the lower threshold
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def _missing_na_probs(na_probs: Dict[str, float], qids: List[str]) -> List[str]:
    return [q for q in qids if q not in na_probs]


def squad_v2_scores(
    gold: Dict[str, List[str]],
    preds: Dict[str, str],
    na_probs: Optional[Dict[str, float]] = None,
    na_prob_thresh: float = 1.0,
) -> "collections.OrderedDict[str, float]":
    """The official SQuAD 2.0 numbers (``out_eval`` of ``evaluate-v2.0.py``).

    Args:
        gold: question id -> gold answer texts, in dataset order (empty list for
            an unanswerable question).
        preds: question id -> predicted text ("" means "no answer"). Ids not in
            ``gold`` are ignored; gold ids missing here are skipped with a warning.
        na_probs: question id -> no-answer probability. Adds the ``best_*`` keys.
            Without it every probability is 0 and no ``best_*`` keys are added.
        na_prob_thresh: a question whose na_prob is above this counts as answered
            "no answer" in ``exact``/``f1`` and the splits.

    Returns:
        OrderedDict with ``exact, f1, total``, then ``HasAns_*`` and ``NoAns_*``
        (each only when that subset is non-empty), then with ``na_probs``
        ``best_exact, best_exact_thresh, best_f1, best_f1_thresh``. Scores are
        percentages; totals are ints.

    Raises:
        DataError: no question has a prediction, or ``na_probs`` lacks a
            question that has one.
    """
    has_ans = {qid: bool(answers) for qid, answers in gold.items()}
    exact_raw, f1_raw, missing = _raw_scores(gold, preds)
    if missing:
        logger.warning(
            "%d of %d question(s) have no prediction and were left out of the scores (first: %r)",
            len(missing), len(gold), missing[0],
        )
    if not exact_raw:
        raise DataError(f"no prediction for any of the {len(gold)} questions; nothing to score")
    scored = list(exact_raw)

    if na_probs is None:
        probs: Dict[str, float] = {qid: 0.0 for qid in preds}
    else:
        absent = _missing_na_probs(na_probs, scored)
        if absent:
            raise DataError(
                f"no-answer probabilities lack {len(absent)} question(s) that have predictions (first: {absent[0]!r})"
            )
        probs = na_probs

    exact_thr = _apply_no_ans_threshold(exact_raw, probs, has_ans, na_prob_thresh)
    f1_thr = _apply_no_ans_threshold(f1_raw, probs, has_ans, na_prob_thresh)

    out = _eval_dict(exact_thr, f1_thr, scored)
    for prefix, qids in (
        ("HasAns", [q for q in scored if has_ans[q]]),
        ("NoAns", [q for q in scored if not has_ans[q]]),
    ):
        if qids:
            for key, value in _eval_dict(exact_thr, f1_thr, qids).items():
                out[f"{prefix}_{key}"] = value

    if na_probs is not None:
        best_exact, exact_thresh = _best_thresh(preds, exact_raw, na_probs, has_ans)
        best_f1, f1_thresh = _best_thresh(preds, f1_raw, na_probs, has_ans)
        out["best_exact"] = best_exact
        out["best_exact_thresh"] = exact_thresh
        out["best_f1"] = best_f1
        out["best_f1_thresh"] = f1_thresh
    return out


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #
def gold_from_squad(payload: dict) -> Dict[str, List[str]]:
    """Question id -> answer texts from a parsed SQuAD JSON document (file order).

    Like the official script, a question is answerable iff its ``answers`` list
    is non-empty (SQuAD 2.0 keeps ``plausible_answers`` apart; they are ignored).
    """
    gold: Dict[str, List[str]] = {}
    try:
        for article in payload["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    gold[qa["id"]] = [a["text"] for a in qa["answers"]]
    except (KeyError, TypeError) as err:
        raise DataError(f"not a SQuAD document (data -> paragraphs -> qas -> answers): {err!r}") from err
    return gold


def _read_predictions(path: PathLike) -> Dict[str, str]:
    from elma.data.squad import read_json

    preds = read_json(Path(path), "predictions file")
    if not isinstance(preds, dict):
        raise DataError(
            f"{path}: predictions must be a JSON object mapping question id to answer text "
            f"(got {type(preds).__name__})"
        )
    for qid, text in preds.items():
        if not isinstance(text, str):
            raise DataError(
                f"{path}: prediction for question {qid!r} must be a string (got {type(text).__name__}); "
                "use \"\" for no answer"
            )
    return preds


def _read_na_probs(path: PathLike) -> Dict[str, float]:
    from elma.data.squad import read_json

    probs = read_json(Path(path), "no-answer probability file")
    if not isinstance(probs, dict):
        raise DataError(
            f"{path}: no-answer probabilities must be a JSON object mapping question id to a number "
            f"(got {type(probs).__name__})"
        )
    for qid, p in probs.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise DataError(f"{path}: no-answer probability for question {qid!r} must be a finite number (got {p!r})")
    return probs


def evaluate_files(
    data_path: PathLike,
    pred_path: PathLike,
    na_prob_path: Optional[PathLike] = None,
    na_prob_thresh: float = 1.0,
) -> "collections.OrderedDict[str, float]":
    """Score a predictions file (and optional no-answer probabilities) against a SQuAD file.

    Same inputs as the official script: ``data_path`` is a SQuAD 1.1/2.0 JSON file,
    ``pred_path`` a JSON object id -> text, ``na_prob_path`` a JSON object id -> number.

    Raises:
        DataError: a file is missing, not JSON, or not of the expected shape (the
            message names the file).
    """
    from elma.data.squad import parse_squad, read_json

    examples = parse_squad(read_json(Path(data_path), "SQuAD file"), str(data_path), check_offsets=False)
    gold = {ex.qid: ex.answer_texts for ex in examples}
    preds = _read_predictions(pred_path)
    na_probs = None
    if na_prob_path is not None:
        na_probs = _read_na_probs(na_prob_path)
        absent = _missing_na_probs(na_probs, [q for q in gold if q in preds])
        if absent:
            raise DataError(
                f"{na_prob_path}: no no-answer probability for {len(absent)} question(s) that have "
                f"predictions (first: {absent[0]!r})"
            )
    if not any(q in preds for q in gold):
        raise DataError(f"{pred_path}: no prediction for any of the {len(gold)} questions in {data_path}")
    return squad_v2_scores(gold, preds, na_probs, na_prob_thresh)
