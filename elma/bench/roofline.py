"""FLOPs per question and this machine's matrix-multiply peak: the lower bound on latency.

FLOPs of one transformer layer on a window of ``T`` tokens, hidden size ``H``, feed-forward size ``F``
(a multiply-add counts 2 FLOPs; softmax, LayerNorm, GELU and biases are left out, they are O(T*H)):

    attention projections  Q, K, V and output:  4 * 2*T*H*H
    attention scores       Q K^T and scores x V: 2 * 2*T*T*H
    feed-forward           up and down:          2 * 2*T*H*F
    exit head              start/end logits:     2*T*H*2

A question costs, summed over its windows, its exit layer times the per-layer FLOPs at that window's
length (the runtime runs each window to its own exit layer; the fused graph runs all of them).
Padding is not counted: the bound is what the question needs, not what a batch shape costs.

The peak is measured, not taken from a data sheet: the best of a few float32 ``numpy`` matmuls of
``PEAK_N`` x ``PEAK_N`` (BLAS, all the threads numpy uses), measured before and after the run with the better
kept, so that a busy moment does not lower it. ``latency bound = FLOPs / peak``.
"""

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

PEAK_N = 512  # matmul size of the microbenchmark: large enough for BLAS to reach its plateau on 2 cores
PEAK_REPEATS = 8


def layer_flops(tokens: int, hidden_size: int, ffn_size: int) -> int:
    """FLOPs of one layer and its exit head on one window of ``tokens`` tokens (see the module docstring)."""
    t, h, f = int(tokens), int(hidden_size), int(ffn_size)
    return 8 * t * h * h + 4 * t * t * h + 4 * t * h * f + 4 * t * h


def question_flops(window_tokens: Sequence[int], window_layers: Sequence[int], hidden_size: int, ffn_size: int) -> int:
    """FLOPs of one question: each window at its own exit layer."""
    return sum(layers * layer_flops(t, hidden_size, ffn_size) for t, layers in zip(window_tokens, window_layers))


@dataclass(frozen=True)
class MatmulPeak:
    n: int  # square matrix size
    repeats: int
    best_ms: float  # fastest matmul
    gflops_per_s: float  # 2 n^3 / best time


def measure_matmul_peak(n: int = PEAK_N, repeats: int = PEAK_REPEATS, seed: int = 0) -> MatmulPeak:
    """Best float32 matmul throughput of ``repeats`` runs (after one warm-up) on this machine, now."""
    if n < 1 or repeats < 1:
        raise ValueError(f"matmul size and repeats must be >= 1 (got {n}, {repeats})")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: BLAS thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    best = max(best, 1e-9)
    return MatmulPeak(n, repeats, best * 1e3, 2.0 * n ** 3 / best / 1e9)


@dataclass(frozen=True)
class RooflineRow:
    name: str  # configuration (policy spec or baseline)
    mean_gflops_per_question: float
    latency_bound_ms: float  # mean FLOPs / measured peak
    mean_latency_ms: float  # measured (or derived, see the configuration's latency_source)
    distance_x: float  # mean_latency_ms / latency_bound_ms: how far above the bound (1.0 = at the bound)


def roofline_row(name: str, mean_flops: float, mean_latency_ms: float, peak: MatmulPeak) -> RooflineRow:
    bound_ms = mean_flops / (peak.gflops_per_s * 1e9) * 1e3
    distance = mean_latency_ms / bound_ms if bound_ms > 0 else float("inf")
    return RooflineRow(name, mean_flops / 1e9, bound_ms, mean_latency_ms, distance)
