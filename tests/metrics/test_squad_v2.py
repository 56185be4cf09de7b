"""SQuAD 2.0 metric: every expected number below is worked out by hand from the
official definition (evaluate-v2.0.py), with the arithmetic in the comments."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from elma.errors import DataError
from elma.metrics.squad_v2 import (
    compute_exact,
    compute_f1,
    evaluate_files,
    gold_from_squad,
    normalize_answer,
    squad_v2_scores,
)

REPO = Path(__file__).resolve().parents[2]
DEV = REPO.parent / "shared/data/squad2/dev.json"
approx = pytest.approx


# --------------------------------------------------------------------------- #
# normalize_answer
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "raw, expected",
    [
        # lower -> "the big  red dog!", punct -> "the big  red dog", articles -> " big  red dog"
        ("The Big  Red Dog!", "big red dog"),
        # punct first: "an apple a pear  the end", then the three articles go
        ("an apple, a pear & THE end.", "apple pear end"),
        ("theatre", "theatre"),  # no word boundary after "the"
        ("a-b", "ab"),  # "-" removed first, so "ab" is one word, not an article
        ("Anna's", "annas"),
        ("\tHello\n  World ", "hello world"),
        ("A", ""),
        ("", ""),
        # "–" (en dash) is not in string.punctuation and is a non-word char, so
        # \b(a)\b matches the leading "a": " –b" -> "–b"
        ("a\u2013b", "\u2013b"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


# --------------------------------------------------------------------------- #
# compute_exact / compute_f1
# --------------------------------------------------------------------------- #
def test_exact():
    assert compute_exact("The Dog", "dog.") == 1  # both "dog"
    assert compute_exact("dog", "dogs") == 0
    assert compute_exact("", "") == 1
    assert compute_exact("", "a") == 1  # "a" normalises to "" too


def test_f1_partial_overlap():
    # gold [big, red, dog], pred [red, dog, house]: common 2
    # P = 2/3, R = 2/3, F1 = 2*(4/9)/(4/3) = 2/3
    assert compute_f1("the big red dog", "red dog house") == approx(2 / 3)
    # gold [barack, obama], pred [president, barack, obama, jr]: common 2
    # P = 2/4, R = 2/2, F1 = 2*0.5*1/1.5 = 2/3
    assert compute_f1("Barack Obama", "President Barack Obama Jr") == approx(2 / 3)
    # multiplicity: gold [new, york, new, york], pred [new, new, new]: common = min(2,3) = 2
    # P = 2/3, R = 2/4, F1 = 2*(1/3)/(7/6) = 4/7
    assert compute_f1("New York, New York", "new new new") == approx(4 / 7)


def test_f1_edge_cases():
    assert compute_f1("cat", "dog") == 0  # no common token
    assert compute_f1("", "dog") == 0  # empty gold, non-empty pred: [] != [dog]
    assert compute_f1("dog", "") == 0
    assert compute_f1("", "") == 1  # both empty
    assert compute_f1("", "The.") == 1  # "The." -> [] == []
    assert compute_f1("The Dog", "dog") == 1.0


# --------------------------------------------------------------------------- #
# squad_v2_scores on five questions
# --------------------------------------------------------------------------- #
# q1: golds normalise to [denver, broncos]; pred [broncos]: P=1, R=1/2, F1=2*.5/1.5=2/3; exact 0
# q2: pred [levis, stadium, in, santa, clara]
#     vs [santa, clara, california]: common 2, P=2/5, R=2/3, F1=(8/15)/(16/15)=1/2
#     vs [levis, stadium]:           common 2, P=2/5, R=1,   F1=(4/5)/(7/5)=4/7  -> max 4/7; exact 0
# q3: unanswerable, pred ""      -> exact 1, f1 1
# q4: unanswerable, pred "Paris" -> exact 0, f1 0
# q5: "1905" vs "1905"           -> exact 1, f1 1
GOLD = {
    "q1": ["Denver Broncos", "The Denver Broncos"],
    "q2": ["Santa Clara, California", "Levi's Stadium"],
    "q3": [],
    "q4": [],
    "q5": ["1905"],
}
PREDS = {"q1": "Broncos", "q2": "Levi's Stadium in Santa Clara", "q3": "", "q4": "Paris", "q5": "1905"}
NA_PROBS = {"q1": 0.1, "q2": 0.6, "q3": 0.3, "q4": 0.8, "q5": 0.2}
F1_RAW = {"q1": 2 / 3, "q2": 4 / 7, "q3": 1, "q4": 0, "q5": 1}


def test_scores_without_na_probs():
    out = squad_v2_scores(GOLD, PREDS)
    assert list(out) == [
        "exact", "f1", "total",
        "HasAns_exact", "HasAns_f1", "HasAns_total",
        "NoAns_exact", "NoAns_f1", "NoAns_total",
    ]
    assert out["exact"] == approx(40.0)  # (0+0+1+0+1)/5
    assert out["f1"] == approx(100 * (2 / 3 + 4 / 7 + 1 + 0 + 1) / 5)  # 100*(68/21)/5 = 64.76...
    assert out["f1"] == approx(6800 / 105)
    assert out["total"] == 5 and isinstance(out["total"], int)
    assert out["HasAns_exact"] == approx(100 / 3)  # q1,q2,q5: 1/3
    assert out["HasAns_f1"] == approx(100 * (47 / 21) / 3)  # 2/3+4/7+1 = 47/21
    assert out["HasAns_total"] == 3
    assert out["NoAns_exact"] == approx(50.0)  # q3 right, q4 wrong
    assert out["NoAns_f1"] == approx(50.0)
    assert out["NoAns_total"] == 2


def test_max_over_gold_answers_and_empty_golds_dropped():
    gold = {"a": ["Levi's Stadium", "Santa Clara"], "b": ["The", "."]}
    # "a": exact against the second gold answer -> 1
    # "b": has answers (so HasAns) but both normalise to "" -> scored against [""]
    out = squad_v2_scores(gold, {"a": "santa clara", "b": "an"})
    assert out["exact"] == 100.0 and out["f1"] == 100.0
    assert out["HasAns_total"] == 2 and "NoAns_total" not in out


def test_only_noans_subset():
    out = squad_v2_scores({"x": [], "y": []}, {"x": "", "y": "something"})
    assert list(out) == ["exact", "f1", "total", "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert out["exact"] == 50.0 and out["NoAns_f1"] == 50.0


def test_best_thresholds():
    # Walk (official find_best_thresh). Start: score = #no-answer questions = 2, thresh 0.0.
    # Sorted by na_prob: q1 .1, q5 .2, q3 .3, q2 .6, q4 .8
    # exact: q1 +0 -> 2 (not >2) | q5 +1 -> 3 (>2: best 3, t=.2) | q3 (no-ans, pred "") +0 -> 3
    #        q2 +0 -> 3 | q4 (no-ans, pred "Paris") -1 -> 2      => best_exact = 100*3/5 = 60, t=.2
    # f1:    q1 +2/3 -> 2.667 (t=.1) | q5 +1 -> 3.667 (t=.2) | q3 +0 | q2 +4/7 -> 4.238 (t=.6)
    #        q4 -1 -> 3.238                                      => best_f1 = 100*(89/21)/5, t=.6
    out = squad_v2_scores(GOLD, PREDS, NA_PROBS)
    assert list(out)[-4:] == ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
    assert out["best_exact"] == approx(60.0)
    assert out["best_exact_thresh"] == 0.2
    assert out["best_f1"] == approx(100 * (89 / 21) / 5)  # 84.76...
    assert out["best_f1_thresh"] == 0.6
    # na_prob_thresh = 1.0 (default): no probability > 1, so exact/f1 are as without na_probs
    assert out["exact"] == approx(40.0) and out["f1"] == approx(6800 / 105)


def test_best_threshold_ties_keep_mapping_order():
    gold = {"a": ["yes"], "b": []}
    preds = {"a": "yes", "b": "no"}
    # start = 1 (one no-answer question).
    # order a, b: a +1 -> 2 (>1: best 2, t=.5); b -1 -> 1        => 100*2/2 = 100, t=.5
    out = squad_v2_scores(gold, preds, {"a": 0.5, "b": 0.5})
    assert (out["best_exact"], out["best_exact_thresh"]) == (100.0, 0.5)
    # order b, a: b -1 -> 0; a +1 -> 1 (not >1)                   => 100*1/2 = 50, t=0.0
    out = squad_v2_scores(gold, preds, {"b": 0.5, "a": 0.5})
    assert (out["best_exact"], out["best_exact_thresh"]) == (50.0, 0.0)
    assert (out["best_f1"], out["best_f1_thresh"]) == (50.0, 0.0)


def test_na_prob_thresh_applied():
    # thresh .5: q2 (.6) and q4 (.8) count as "no answer":
    #   q2 answerable -> 0.0, q4 unanswerable -> 1.0
    # exact: 0,0,1,1,1 -> 60 ; f1: 2/3,0,1,1,1 = 11/3 -> 100*(11/3)/5 = 73.33
    # HasAns (q1,q2,q5): exact 1/3, f1 (2/3+0+1)/3 = 5/9 ; NoAns: 100, 100
    out = squad_v2_scores(GOLD, PREDS, NA_PROBS, na_prob_thresh=0.5)
    assert out["exact"] == approx(60.0)
    assert out["f1"] == approx(100 * (11 / 3) / 5)
    assert out["HasAns_exact"] == approx(100 / 3)
    assert out["HasAns_f1"] == approx(500 / 9)
    assert out["NoAns_exact"] == 100.0 and out["NoAns_f1"] == 100.0
    # best_* use the raw scores: unchanged
    assert out["best_exact"] == approx(60.0) and out["best_f1_thresh"] == 0.6


def test_without_na_probs_every_probability_is_zero():
    # 0.0 > -0.5 for every question: all "no answer" -> only q3, q4 right: 2/5
    out = squad_v2_scores(GOLD, PREDS, na_prob_thresh=-0.5)
    assert out["exact"] == approx(40.0) and out["f1"] == approx(40.0)
    assert out["HasAns_exact"] == 0.0 and out["NoAns_exact"] == 100.0
    assert "best_exact" not in out


def test_missing_predictions_skipped_with_one_warning(caplog):
    preds = {k: v for k, v in PREDS.items() if k != "q4"}
    preds["not-a-gold-id"] = "ignored"
    na = dict(NA_PROBS, **{"not-a-gold-id": 0.0})
    with caplog.at_level(logging.WARNING, logger="elma.metrics.squad_v2"):
        out = squad_v2_scores(GOLD, preds, na)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 of 5" in warnings[0].getMessage()
    # scored: q1 0, q2 0, q3 1, q5 1 -> exact 2/4 = 50 ; NoAns only q3
    assert out["total"] == 4 and out["exact"] == approx(50.0)
    assert out["HasAns_total"] == 3 and out["NoAns_total"] == 1
    # walk: start 1 (only scored no-answer q3); not-a-gold-id (0.0) skipped;
    # q1 +0 -> 1 | q5 +1 -> 2 (t=.2) | q3 +0 | q2 +0  => 100*2/4 = 50, t=.2
    assert out["best_exact"] == approx(50.0) and out["best_exact_thresh"] == 0.2


def test_errors_in_scores():
    with pytest.raises(DataError, match="no prediction for any"):
        squad_v2_scores(GOLD, {})
    with pytest.raises(DataError, match="lack 1 question"):
        squad_v2_scores(GOLD, PREDS, {k: v for k, v in NA_PROBS.items() if k != "q2"})


# --------------------------------------------------------------------------- #
# gold_from_squad / evaluate_files
# --------------------------------------------------------------------------- #
SQUAD = {
    "version": "v2.0",
    "data": [{"title": "T", "paragraphs": [
        {"context": "The Denver Broncos won in Santa Clara in 1905.",
         "qas": [
             {"id": "q1", "question": "Who won?", "is_impossible": False,
              "answers": [{"text": "Denver Broncos", "answer_start": 4},
                          {"text": "The Denver Broncos", "answer_start": 0}]},
             {"id": "q3", "question": "Who lost?", "is_impossible": True, "answers": [],
              "plausible_answers": [{"text": "Denver Broncos", "answer_start": 4}]},
             {"id": "q5", "question": "When?", "answers": [{"text": "1905", "answer_start": 41}]},
         ]},
    ]}],
}


def test_gold_from_squad():
    assert gold_from_squad(SQUAD) == {"q1": ["Denver Broncos", "The Denver Broncos"], "q3": [], "q5": ["1905"]}
    with pytest.raises(DataError):
        gold_from_squad({"data": [{"no": "paragraphs"}]})


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def test_evaluate_files(tmp_path):
    data = _write(tmp_path / "dev.json", SQUAD)
    preds = {"q1": "Broncos", "q3": "", "q5": "1905"}
    na = {"q1": 0.1, "q3": 0.3, "q5": 0.2}
    pred_f = _write(tmp_path / "pred.json", preds)
    na_f = _write(tmp_path / "na.json", na)
    out = evaluate_files(data, pred_f, na_f)
    assert out == squad_v2_scores(gold_from_squad(SQUAD), preds, na)
    # exact: 0,1,1 -> 66.67 ; f1: 2/3,1,1 -> 100*(8/3)/3 = 88.89
    assert out["exact"] == approx(200 / 3) and out["f1"] == approx(800 / 9)
    assert "best_f1" not in evaluate_files(data, pred_f)


@pytest.mark.parametrize(
    "which, content, message",
    [
        ("pred", None, "no such predictions file"),
        ("pred", "{not json", "invalid JSON"),
        ("pred", ["q1"], "must be a JSON object"),
        ("pred", {"q1": 3}, "must be a string"),
        ("pred", {"other": "x"}, "no prediction for any"),
        ("na", {"q1": "0.1", "q3": 0, "q5": 0}, "must be a finite number"),
        ("na", {"q1": True, "q3": 0, "q5": 0}, "must be a finite number"),
        ("na", {"q1": 0.1}, "no no-answer probability for 2"),
        ("na", [0.1], "must be a JSON object"),
        ("data", {"no": "data"}, "missing key 'data'"),
    ],
)
def test_evaluate_files_errors(tmp_path, which, content, message):
    paths = {
        "data": tmp_path / "dev.json",
        "pred": tmp_path / "pred.json",
        "na": tmp_path / "na.json",
    }
    _write(paths["data"], SQUAD)
    _write(paths["pred"], {"q1": "x", "q3": "", "q5": "1905"})
    _write(paths["na"], {"q1": 0.1, "q3": 0.3, "q5": 0.2})
    if content is None:
        paths[which].unlink()
    else:
        _write(paths[which], content)
    with pytest.raises(DataError, match=message) as err:
        evaluate_files(paths["data"], paths["pred"], paths["na"])
    assert paths[which].name in str(err.value) and "\n" not in str(err.value)


def test_imports_without_heavy_packages():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['numpy'] = None; sys.modules['transformers'] = None\n"
        "import elma.metrics.squad_v2 as m\n"
        "print(m.compute_f1('a b', 'b'))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1.0"  # [b] vs [b] ("a" is an article)


# --------------------------------------------------------------------------- #
# The real SQuAD 2.0 dev file
# --------------------------------------------------------------------------- #
def _synthetic(raw: dict):
    """Deterministic predictions: exact / truncated / empty in turn; na_prob from a hash."""
    preds, na = {}, {}
    i = 0
    for article in raw["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = [a["text"] for a in qa["answers"]]
                if i % 3 == 0:
                    preds[qa["id"]] = answers[0] if answers else ""
                elif i % 3 == 1:
                    source = answers[0] if answers else qa["question"]
                    words = source.split()
                    preds[qa["id"]] = " ".join(words[: max(1, len(words) // 2)])
                else:
                    preds[qa["id"]] = ""
                digest = hashlib.sha256(qa["id"].encode("utf-8")).hexdigest()
                na[qa["id"]] = int(digest[:12], 16) / float(16 ** 12)
                i += 1
    return preds, na


# An independent, differently written reference (character filter, another form
# of the article regex, F1 as 2*common/(|p|+|g|), best threshold by brute force).
_PUNCT = set(string.punctuation)


def _ref_norm(s):
    no_punct = "".join(c for c in s.lower() if c not in _PUNCT)
    return " ".join(re.sub(r"\b(?:the|an|a)\b", " ", no_punct).split())


def _ref_scores(answers, pred):
    golds = [_ref_norm(a) for a in answers if _ref_norm(a)] or [""]
    p = _ref_norm(pred)
    exact = float(any(g == p for g in golds))
    f1 = 0.0
    for g in golds:
        gt, pt = g.split(), p.split()
        if not gt or not pt:
            f1 = max(f1, float(gt == pt))
            continue
        common = sum((Counter(gt) & Counter(pt)).values())
        f1 = max(f1, 2.0 * common / (len(gt) + len(pt)))
    return exact, f1


def _ref_best(qids, raw, has_ans, preds, na):
    # With distinct na_probs, answering every question with na <= t and abstaining
    # on the rest: best over t (and over "abstain everywhere", t = 0.0).
    best, best_t = sum(1 for q in qids if not has_ans[q]), 0.0
    for t in sorted(na[q] for q in qids):
        score = 0.0
        for q in qids:
            if na[q] <= t:
                score += raw[q] if has_ans[q] else float(not preds[q])
            else:
                score += float(not has_ans[q])
        if score > best + 1e-9:
            best, best_t = score, t
    return 100.0 * best / len(qids), best_t


@pytest.fixture(scope="module")
def dev_raw():
    if not DEV.is_file():
        pytest.skip(f"SQuAD 2.0 dev file not found at {DEV}")
    return json.loads(DEV.read_text(encoding="utf-8"))


def test_dev_file_against_reference(dev_raw, tmp_path):
    preds, na = _synthetic(dev_raw)
    pred_f = _write(tmp_path / "pred.json", preds)
    na_f = _write(tmp_path / "na.json", na)
    out = evaluate_files(DEV, pred_f, na_f)

    gold = gold_from_squad(dev_raw)
    assert out == squad_v2_scores(gold, preds, na)  # file path == in-memory path
    assert out["total"] == 6078 == len(gold)
    assert out["HasAns_total"] + out["NoAns_total"] == out["total"]
    assert out["NoAns_total"] == sum(1 for a in gold.values() if not a)
    # (best_f1 can sit a rounding error below f1: its sum runs in na_prob order)
    assert out["best_f1"] >= out["f1"] - 1e-9 and out["best_exact"] >= out["exact"] - 1e-9
    assert out["f1"] >= out["exact"]

    has_ans = {q: bool(a) for q, a in gold.items()}
    ref = {q: _ref_scores(gold[q], preds[q]) for q in gold}
    n = len(gold)
    assert out["exact"] == approx(100.0 * sum(e for e, _ in ref.values()) / n, rel=1e-12)
    assert out["f1"] == approx(100.0 * sum(f for _, f in ref.values()) / n, rel=1e-12)
    h = [q for q in gold if has_ans[q]]
    assert out["HasAns_f1"] == approx(100.0 * sum(ref[q][1] for q in h) / len(h), rel=1e-12)

    # best_* by brute force on the first 300 questions (O(n^2) stays fast).
    sub = list(gold)[:300]
    assert len({na[q] for q in sub}) == len(sub)  # distinct, so thresholds = prefixes
    small = squad_v2_scores({q: gold[q] for q in sub}, preds, na)
    for key, idx in (("exact", 0), ("f1", 1)):
        raw = {q: ref[q][idx] for q in sub}
        best, t = _ref_best(sub, raw, has_ans, preds, na)
        assert small[f"best_{key}"] == approx(best, rel=1e-12)
        assert small[f"best_{key}_thresh"] == t
