"""Latency ratios with a paired bootstrap interval over questions (numpy only, seeded).

Every configuration is timed on the same questions, back to back (``elma.bench.schedule``), so the two
latency vectors are paired: a resample draws question indices with replacement and takes the same
indices from both. The ratio is the reference's total time over the configuration's (its speed-up;
the ratio of the two means), and the interval is the percentile interval of that ratio over the
resamples (Efron and Tibshirani, ch. 13). Resamples are drawn in chunks so that memory stays at
``chunk x questions`` indices whatever the number of resamples.
"""

from typing import Sequence

import numpy as np

from elma.bench.results import RatioCI

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
_CHUNK = 256  # resamples drawn at once: 256 x 6,078 questions x 8 bytes = 12 MB of indices


def ratio_ci(reference_ms: Sequence[float], config_ms: Sequence[float], reference: str = "reference",
             resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = 0.95) -> RatioCI:
    """Speed-up of a configuration over ``reference`` with a paired bootstrap interval.

    Args:
        reference_ms, config_ms: per question latency, ms, in the same question order.
        reference: the reference's name (recorded in the result).
        resamples: bootstrap resamples of the questions.
        seed: seed of ``numpy.random.default_rng``: the same inputs and seed give the same interval.
        level: coverage of the percentile interval.

    Raises:
        ValueError: lengths differ, no questions, a latency that is not positive and finite, or a bad level.
    """
    ref = np.asarray(reference_ms, dtype=np.float64)
    cfg = np.asarray(config_ms, dtype=np.float64)
    if ref.shape != cfg.shape or ref.ndim != 1:
        raise ValueError(f"paired latencies need two vectors of one length (got {ref.shape} and {cfg.shape})")
    if ref.size == 0:
        raise ValueError("no questions to compare")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(cfg)) and np.all(ref > 0) and np.all(cfg > 0)):
        raise ValueError("latencies must be positive and finite")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"need 0 < level < 1 and resamples >= 1 (got {level}, {resamples})")
    n = ref.size
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples, dtype=np.float64)
    for lo in range(0, resamples, _CHUNK):
        k = min(_CHUNK, resamples - lo)
        idx = rng.integers(0, n, size=(k, n))  # (k, n) question indices, the same for both vectors
        ratios[lo:lo + k] = ref[idx].sum(axis=1) / cfg[idx].sum(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return RatioCI(reference, float(ref.sum() / cfg.sum()), float(low), float(high), level, resamples,
                   float(np.mean(ref / cfg)))
