"""Paired bootstrap of a latency ratio: the point value is the ratio of means, the interval is seeded, pairs
questions, narrows with more questions and covers the true ratio about 95% of the time."""

import numpy as np
import pytest

from elma.bench.bootstrap import ratio_ci


def test_point_value_and_seeded_interval():
    ref = [10.0, 20.0, 30.0, 40.0]
    cfg = [5.0, 10.0, 15.0, 20.0]  # exactly twice as fast on every question
    r = ratio_ci(ref, cfg, "fused", resamples=500, seed=3)
    assert r.ratio == pytest.approx(2.0) and r.mean_of_ratios == pytest.approx(2.0)
    assert r.low == pytest.approx(2.0) and r.high == pytest.approx(2.0), "paired: every resample gives 2"
    assert r.reference == "fused" and r.level == 0.95 and r.resamples == 500
    assert ratio_ci(ref, cfg, seed=3, resamples=500) == ratio_ci(ref, cfg, seed=3, resamples=500)


def test_pairing_removes_shared_noise():
    rng = np.random.default_rng(0)
    load = rng.lognormal(0.0, 0.5, 400)  # a slow spell hits both configurations of a question alike
    ref, cfg = 30.0 * load, 20.0 * load * rng.normal(1.0, 0.01, 400)
    paired = ratio_ci(ref, cfg, resamples=1000)
    unpaired = ratio_ci(ref, rng.permutation(cfg), resamples=1000)  # the pairing destroyed
    assert paired.low <= 1.5 <= paired.high
    assert paired.high - paired.low < 0.2 * (unpaired.high - unpaired.low)


def test_coverage_about_95_percent():
    rng = np.random.default_rng(1)
    hits, trials = 0, 200
    for t in range(trials):
        ref = rng.gamma(4.0, 10.0, 150)
        cfg = ref / 1.3 * rng.lognormal(0.0, 0.2, 150) / np.exp(0.02)  # E[cfg] = E[ref] / 1.3
        r = ratio_ci(ref, cfg, resamples=400, seed=t)
        hits += r.low <= 1.3 <= r.high
    assert 0.88 <= hits / trials <= 0.99


@pytest.mark.parametrize("ref,cfg", [([1.0, 2.0], [1.0]), ([], []), ([1.0, 0.0], [1.0, 1.0]), ([1.0, float("nan")], [1.0, 1.0])])
def test_bad_input_is_refused(ref, cfg):
    with pytest.raises(ValueError):
        ratio_ci(ref, cfg)
