"""Stable statistics: fp16 inputs, huge and all-equal logits, masks."""

import math

import numpy as np
import pytest

from elma.runtime.stats import entropy, kl_divergence, log_softmax, max_prob


def test_all_equal_logits_give_log_n_entropy_and_uniform_max_prob():
    x = np.zeros(8, dtype=np.float16)
    assert entropy(x) == pytest.approx(math.log(8), rel=1e-6)
    assert max_prob(x) == pytest.approx(1 / 8)


def test_huge_logits_do_not_overflow():
    x = np.array([3.0, 1.0, -2.0], dtype=np.float32) * 1e6
    assert np.isfinite(log_softmax(x)).sum() >= 1
    assert entropy(x) == pytest.approx(0.0, abs=1e-6)
    assert max_prob(x) == pytest.approx(1.0)


def test_fp16_logits_above_exp_overflow_are_fine():
    x = np.array([20.0, 12.0, 0.0], dtype=np.float16)  # exp(20) overflows float16
    ref = np.array([20.0, 12.0, 0.0], dtype=np.float64)
    p = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
    assert entropy(x) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-4)


def test_mask_removes_positions():
    x = np.array([0.0, 0.0, 0.0, 100.0])
    mask = np.array([True, True, True, False])
    assert entropy(x, mask) == pytest.approx(math.log(3), rel=1e-6)
    assert max_prob(x, mask) == pytest.approx(1 / 3)


def test_batched_rows():
    x = np.stack([np.zeros(4), np.array([50.0, 0, 0, 0])])
    h = entropy(x)
    assert h.shape == (2,) and h[0] == pytest.approx(math.log(4)) and h[1] == pytest.approx(0, abs=1e-6)


def test_kl_is_zero_for_identical_and_positive_otherwise():
    a = np.array([1.0, 2.0, 3.0])
    assert kl_divergence(a, a) == pytest.approx(0.0, abs=1e-7)
    b = np.array([3.0, 2.0, 1.0])
    p = np.exp(a) / np.exp(a).sum()
    q = np.exp(b) / np.exp(b).sum()
    assert kl_divergence(a, b) == pytest.approx((p * np.log(p / q)).sum(), rel=1e-5)
    assert kl_divergence(a * 1e6, b * 1e6) > 0 and np.isfinite(kl_divergence(a * 1e6, b * 1e6))
