import numpy as np
import pytest

from elma.metrics.answerability import null_auc, span_f1


def _pairwise_auc(diffs, gold):
    pos = [diffs[q] for q in gold if not gold[q]]
    neg = [diffs[q] for q in gold if gold[q]]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return 100.0 * wins / (len(pos) * len(neg))


def test_null_auc_perfect_inverted_and_chance():
    gold = {"a": ["x"], "b": ["y"], "c": [], "d": []}
    assert null_auc({"a": -3.0, "b": -2.0, "c": 1.0, "d": 2.0}, gold) == 100.0
    assert null_auc({"a": 3.0, "b": 2.0, "c": -1.0, "d": -2.0}, gold) == 0.0
    assert null_auc({q: 0.0 for q in gold}, gold) == 50.0


def test_null_auc_matches_pairwise_count_with_ties_and_inf():
    rng = np.random.default_rng(0)
    gold = {f"q{i}": ([] if rng.random() < 0.4 else ["ans"]) for i in range(300)}
    diffs = {q: float(rng.integers(-5, 5)) for q in gold}  # many ties
    diffs["q0"] = float("inf")  # no span possible
    assert null_auc(diffs, gold) == pytest.approx(_pairwise_auc(diffs, gold))


def test_null_auc_undefined_with_one_side_only():
    assert null_auc({"a": 1.0}, {"a": ["x"]}) is None
    assert null_auc({"a": 1.0}, {"a": []}) is None


def test_span_f1_scores_answerable_questions_only_best_gold():
    gold = {"a": ["the Eiffel Tower", "Eiffel"], "b": ["Paris"], "c": []}
    spans = {"a": "Eiffel", "b": "in Paris France", "c": "anything"}
    # a: exact match with the second gold -> 1; b: 1 common token of 3 predicted, 1 gold -> F1 0.5
    assert span_f1(spans, gold) == pytest.approx(75.0)
    assert span_f1({"c": "x"}, {"c": []}) is None
