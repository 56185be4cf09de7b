"""Distribution-free risk control: Hoeffding-Bentkus and betting (WSR) p-values, and fixed-sequence testing.

Learn then Test (Angelopoulos, Bates, Candès, Jordan and Lei, 2021, https://arxiv.org/abs/2110.01052), as
CALM uses it to calibrate early exit (Schuster et al., 2022, https://arxiv.org/abs/2207.07061). For a setting
with per-question losses in [0, 1], i.i.d. over questions, and the null hypothesis "its mean loss (the risk)
exceeds ``delta``", the Hoeffding-Bentkus p-value of an empirical mean ``r`` over ``n`` questions is

    p = min(exp(-n * h1(min(r, delta), delta)),  e * P(Binomial(n, delta) <= ceil(n * r)))
    h1(a, b) = a * log(a / b) + (1 - a) * log((1 - a) / (1 - b))

(LTT, Proposition 3; the Hoeffding term is valid for any loss in [0, 1], Bentkus' for the same class with
the binomial as the worst case). Settings tested in a fixed order, each at level ``epsilon``, stopping at the
first that fails, control the family-wise error: with probability at least 1 - epsilon every setting that
passed has risk at most ``delta``.

The Hoeffding-Bentkus p-value sees only the mean; it must assume the worst spread a mean that low allows. The
betting p-value (Waudby-Smith and Ramdas, "Estimating means of bounded random variables by betting", 2024,
https://arxiv.org/abs/2010.09686, in the form Risk-Controlling Prediction Sets use as the "WSR bound", Bates
et al., 2021, https://arxiv.org/abs/2101.02703) reads the losses one by one and grows a wealth

    K_t = prod_{i <= t} (1 - lam_i * (L_i - delta)),   p = min(1, 1 / max_t K_t)

with each bet ``lam_i`` in [0, 1] set from the losses before it only (a predictable plug-in of their variance).
When the risk is at least ``delta`` the wealth is a nonnegative supermartingale, so by Ville's inequality
P(max_t K_t >= 1 / epsilon) <= epsilon: a valid p-value for any losses in [0, 1], much smaller than the
Hoeffding-Bentkus one when the losses vary little around a mean far from 0, as a signed loss mapped to [0, 1]
does (``elma.runtime.certify``'s f1-mean risk). It needs the losses in an order independent of them (the
caller shuffles with a seed); exchangeable questions then read as an i.i.d. sequence.

Pure functions, no I/O; scipy's binomial CDF when scipy is installed, else a log-space sum (both tested).
"""

import math
from typing import Sequence

import numpy as np


def _check(mean_loss: float, n: int, delta: float) -> None:
    if not 0.0 <= mean_loss <= 1.0:
        raise ValueError(f"mean loss must be in [0, 1] (got {mean_loss})")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive whole number of questions (got {n})")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1) on the loss scale (got {delta})")


def _kl_bernoulli(a: float, b: float) -> float:
    """h1(a, b): KL divergence between Bernoulli(a) and Bernoulli(b), with 0 log 0 = 0."""
    out = 0.0
    if a > 0.0:
        out += a * math.log(a / b)
    if a < 1.0:
        out += (1.0 - a) * math.log((1.0 - a) / (1.0 - b))
    return out


def hoeffding_pvalue(mean_loss: float, n: int, delta: float) -> float:
    """exp(-n h1(min(r, delta), delta)): Hoeffding's bound in its KL (Chernoff) form."""
    _check(mean_loss, n, delta)
    return math.exp(-n * _kl_bernoulli(min(mean_loss, delta), delta))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    try:
        from scipy.stats import binom
    except ImportError:
        return _binomial_cdf_logsum(k, n, p)
    return float(binom.cdf(k, n, p))


def _binomial_cdf_logsum(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k) for 0 <= k < n, 0 < p < 1: each pmf term in log space (lgamma), summed with
    log-sum-exp so that neither tail underflows before the sum is taken."""
    i = np.arange(k + 1, dtype=np.float64)
    lgam = np.vectorize(math.lgamma, otypes=[np.float64])
    log_pmf = (math.lgamma(n + 1) - lgam(i + 1) - lgam(n - i + 1)
               + i * math.log(p) + (n - i) * math.log1p(-p))
    top = float(log_pmf.max())
    return float(min(1.0, math.exp(top) * float(np.exp(log_pmf - top).sum())))


def bentkus_pvalue(mean_loss: float, n: int, delta: float) -> float:
    """e * P(Binomial(n, delta) <= ceil(n r)): Bentkus' bound (may exceed 1; the HB p-value caps it)."""
    _check(mean_loss, n, delta)
    # n * r is a whole number of loss units up to float error when the losses are 0/1; round that error
    # away before ceil so that 36 / 100 * 100 = 36.000000000000004 does not count as 37.
    k = int(math.ceil(round(n * mean_loss, 9)))
    return math.e * binomial_cdf(k, n, delta)


def hoeffding_bentkus_pvalue(mean_loss: float, n: int, delta: float) -> float:
    """p-value of "risk > delta" from an empirical mean loss over ``n`` i.i.d. questions, losses in [0, 1].

    Args:
        mean_loss: the empirical risk, mean of the per-question losses (0-1).
        n: questions it is averaged over.
        delta: the risk level to certify (0-1, exclusive).

    Returns:
        The Hoeffding-Bentkus p-value in [0, 1]: small when the risk is credibly at most ``delta``.
    """
    return min(1.0, hoeffding_pvalue(mean_loss, n, delta), bentkus_pvalue(mean_loss, n, delta))


def wsr_pvalue(losses: Sequence[float], delta: float, epsilon: float) -> float:
    """p-value of "risk > delta" by betting (WSR) on per-question losses in [0, 1], read in the order given.

    Args:
        losses: per-question losses (0-1), in an order that does not depend on their values.
        delta: the risk level to certify (0-1, exclusive).
        epsilon: the level the p-value will be compared with: it sizes the bets (as RCPS's WSR bound does), which
            keeps the p-value valid at every level but smallest near this one.

    Returns:
        min(1, 1 / max_t K_t) in (0, 1].
    """
    loss = np.asarray(losses, dtype=np.float64)
    if loss.ndim != 1 or loss.size < 1:
        raise ValueError("wsr_pvalue needs a non-empty 1-d sequence of losses")
    if loss.min() < 0.0 or loss.max() > 1.0 or np.isnan(loss).any():
        raise ValueError(f"losses must be in [0, 1] (got {loss.min():g} to {loss.max():g})")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1) on the loss scale (got {delta})")
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1) (got {epsilon})")
    n = loss.size
    t = np.arange(1, n + 1, dtype=np.float64)
    mean = (0.5 + np.cumsum(loss)) / (t + 1.0)  # mu_t, shrunk towards 1/2: after loss t
    var = (0.25 + np.cumsum((loss - mean) ** 2)) / (t + 1.0)  # sigma^2_t, shrunk towards 1/4
    var_before = np.concatenate([[0.25], var[:-1]])  # what bet i may use: losses 1..i-1 only
    lam = np.minimum(1.0, np.sqrt(2.0 * math.log(1.0 / epsilon) / (n * var_before)))
    log_wealth = np.cumsum(np.log1p(-lam * (loss - delta)))  # 1 - lam (L - delta) >= delta > 0
    return float(min(1.0, math.exp(-float(log_wealth.max()))))


def fixed_sequence(p_values: Sequence[float], epsilon: float) -> int:
    """How many settings, tested in the given order, pass before the first p-value above ``epsilon``.

    Every setting before the stop is certified (family-wise error at most ``epsilon``); the ones after it are
    not, whatever their p-values: a later pass would spend error the sequence no longer has.
    """
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1) (got {epsilon})")
    passed = 0
    for p in p_values:
        if p > epsilon:
            break
        passed += 1
    return passed
