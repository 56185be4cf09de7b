"""Hoeffding-Bentkus and betting (WSR) p-values and fixed-sequence testing (elma.runtime.risk), against hand values,
exact sums, and many draws under the null."""

import math
import sys
from fractions import Fraction

import numpy as np
import pytest

from elma.runtime import risk
from elma.runtime.risk import (
    bentkus_pvalue,
    binomial_cdf,
    fixed_sequence,
    hoeffding_bentkus_pvalue,
    hoeffding_pvalue,
    wsr_pvalue,
)


def exact_cdf(k: int, n: int, p: Fraction) -> Fraction:
    return sum((math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1)), Fraction(0))


@pytest.mark.parametrize("n,p", [(1, Fraction(1, 2)), (30, Fraction(1, 10)), (200, Fraction(3, 100))])
def test_binomial_cdf_equals_the_exact_sum(n, p):
    for k in range(-1, n + 1):
        want = float(exact_cdf(k, n, p)) if k >= 0 else 0.0
        assert binomial_cdf(k, n, float(p)) == pytest.approx(want, rel=1e-9, abs=1e-300)
        if 0 <= k < n:
            assert risk._binomial_cdf_logsum(k, n, float(p)) == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_the_logsum_fallback_matches_scipy_in_the_far_tail():
    pytest.importorskip("scipy")
    for k, n, p in [(0, 5000, 0.01), (20, 5000, 0.01), (49, 5000, 0.01), (30000, 60000, 0.5), (59999, 60000, 0.9)]:
        assert risk._binomial_cdf_logsum(k, n, p) == pytest.approx(binomial_cdf(k, n, p), rel=1e-8)


def test_without_scipy_the_fallback_answers(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    assert binomial_cdf(3, 40, 0.2) == pytest.approx(float(exact_cdf(3, 40, Fraction(1, 5))), rel=1e-9)
    assert hoeffding_bentkus_pvalue(0.0, 100, 0.1) == pytest.approx(0.9 ** 100)


def test_hand_values():
    # No loss at all on 100 questions, delta 0.1: Hoeffding gives 0.9^100, Bentkus e * 0.9^100.
    assert hoeffding_pvalue(0.0, 100, 0.1) == pytest.approx(0.9 ** 100)
    assert bentkus_pvalue(0.0, 100, 0.1) == pytest.approx(math.e * 0.9 ** 100)
    assert hoeffding_bentkus_pvalue(0.0, 100, 0.1) == pytest.approx(0.9 ** 100)
    # r = 0.05 on n = 1000 against 0.1: KL(0.05 || 0.1) = 0.05 ln 0.5 + 0.95 ln(0.95 / 0.9).
    kl = 0.05 * math.log(0.5) + 0.95 * math.log(0.95 / 0.9)
    assert hoeffding_pvalue(0.05, 1000, 0.1) == pytest.approx(math.exp(-1000 * kl))
    # Bentkus counts ceil(n r) losses: 36 / 100 must stay 36 however the float rounds.
    assert bentkus_pvalue(36 / 100, 100, 0.5) == pytest.approx(math.e * float(exact_cdf(36, 100, Fraction(1, 2))))
    # At or above delta nothing is certified.
    assert hoeffding_bentkus_pvalue(0.1, 500, 0.1) == 1.0 and hoeffding_bentkus_pvalue(0.4, 500, 0.1) == 1.0


def test_p_value_falls_with_more_questions_and_rises_with_the_risk():
    assert hoeffding_bentkus_pvalue(0.02, 2000, 0.05) < hoeffding_bentkus_pvalue(0.02, 200, 0.05)
    ps = [hoeffding_bentkus_pvalue(r / 100, 1000, 0.05) for r in range(0, 6)]
    assert ps == sorted(ps) and ps[0] < 1e-20


@pytest.mark.parametrize("n,delta,epsilon", [(50, 0.1, 0.1), (200, 0.05, 0.1), (500, 0.02, 0.05), (1000, 0.3, 0.2)])
def test_valid_p_value_exactly_under_the_worst_case_null(n, delta, epsilon):
    """Losses 0/1 with risk exactly delta (the hardest null): P(p <= epsilon) <= epsilon, summed exactly over
    every outcome; and above delta it is smaller still."""
    for true_risk in (delta, min(0.99, 1.5 * delta)):
        p_true = Fraction(true_risk).limit_denominator(10 ** 6)
        reject = sum((math.comb(n, k) * p_true ** k * (1 - p_true) ** (n - k) for k in range(n + 1)
                      if hoeffding_bentkus_pvalue(k / n, n, delta) <= epsilon), Fraction(0))
        assert float(reject) <= epsilon, (true_risk, float(reject))


def test_fixed_sequence_stops_at_the_first_failure():
    assert fixed_sequence([0.001, 0.2, 0.001, 0.001], 0.1) == 1, "a later pass does not count after a failure"
    assert fixed_sequence([0.001, 0.05, 0.1], 0.1) == 3, "p equal to epsilon passes"
    assert fixed_sequence([0.5, 0.0], 0.1) == 0 and fixed_sequence([], 0.1) == 0


def null_draws(kind: str, rng, draws: int, n: int, delta: float) -> np.ndarray:
    """(draws, n) losses in [0, 1] with mean exactly ``delta``."""
    if kind == "bernoulli":  # the widest spread a mean of delta allows
        return (rng.random((draws, n)) < delta).astype(np.float64)
    if kind == "fractional":  # a drop of some size on a fraction of the questions
        return (rng.random((draws, n)) < 2 * delta) * rng.uniform(0.0, 1.0, (draws, n))
    # "signed": an F1 difference in [-1, 1] mapped to [0, 1]; mostly no change, some gains and some drops
    u = rng.random((draws, n))
    change = rng.uniform(0.2, 1.0, (draws, n))
    d = np.where(u < 0.08, change, 0.0) - np.where(u > 0.96, change, 0.0)  # mean 0.6 * (0.08 - 0.04) = 0.024
    assert delta == 0.512, "the signed draws have a mapped mean of (0.024 + 1) / 2"
    return (d + 1) / 2


@pytest.mark.parametrize("kind,n,delta", [("bernoulli", 300, 0.1), ("fractional", 500, 0.05),
                                          ("signed", 1000, 0.512)])
def test_wsr_p_value_is_valid_under_the_null(kind, n, delta):
    """With the risk exactly delta, p <= epsilon in at most about epsilon of many draws, at two levels."""
    rng = np.random.default_rng(11)
    losses = null_draws(kind, rng, 2000, n, delta)
    assert abs(losses.mean() - delta) < 0.002, "the draws must sit on the null's boundary"
    for epsilon in (0.1, 0.02):
        p = np.array([wsr_pvalue(row, delta, epsilon) for row in losses])
        tolerance = 3 * math.sqrt(epsilon * (1 - epsilon) / p.size)
        assert (p <= epsilon).mean() <= epsilon + tolerance, (kind, epsilon, (p <= epsilon).mean())


def test_wsr_sees_a_small_spread_that_hoeffding_bentkus_cannot():
    """Losses tight around 0.49, delta 0.5 (a signed F1 loss 2 points under a 0 risk level, mapped): the mean alone
    cannot tell them from coin flips, the betting p-value can; on 0/1 losses the two agree roughly."""
    rng = np.random.default_rng(5)
    tight = np.clip(0.49 + rng.normal(0, 0.05, 2000), 0, 1)
    assert hoeffding_bentkus_pvalue(float(tight.mean()), tight.size, 0.5) > 0.3
    assert wsr_pvalue(tight, 0.5, 0.05) < 1e-6
    coins = (rng.random(2000) < 0.03).astype(float)
    hb, wsr = hoeffding_bentkus_pvalue(float(coins.mean()), coins.size, 0.05), wsr_pvalue(coins, 0.05, 0.05)
    assert hb < 0.01 and wsr < 0.05, (hb, wsr)
    # Above delta, nothing is certified.
    assert wsr_pvalue(np.clip(0.52 + rng.normal(0, 0.05, 2000), 0, 1), 0.5, 0.05) > 0.5


@pytest.mark.parametrize("call", [lambda: hoeffding_bentkus_pvalue(1.2, 10, 0.1),
                                  lambda: hoeffding_bentkus_pvalue(0.1, 0, 0.1),
                                  lambda: hoeffding_bentkus_pvalue(0.1, 10, 0.0),
                                  lambda: hoeffding_bentkus_pvalue(0.1, 10, 1.0),
                                  lambda: fixed_sequence([0.1], 0.0),
                                  lambda: wsr_pvalue([0.2, 1.1], 0.1, 0.1),
                                  lambda: wsr_pvalue([-0.2, 0.1], 0.1, 0.1),
                                  lambda: wsr_pvalue([], 0.1, 0.1),
                                  lambda: wsr_pvalue([0.2], 1.0, 0.1),
                                  lambda: wsr_pvalue([0.2], 0.1, 0.0)])
def test_bad_arguments_are_refused(call):
    with pytest.raises(ValueError):
        call()
