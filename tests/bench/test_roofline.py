"""The FLOPs formula on hand-computed numbers, and the matmul peak microbenchmark."""

import pytest

from elma.bench.roofline import layer_flops, measure_matmul_peak, question_flops, roofline_row


def test_layer_flops_by_hand():
    # T=10, H=4, F=16: 8*10*16 + 4*100*4 + 4*10*4*16 + 4*10*4 = 1280 + 1600 + 2560 + 160
    assert layer_flops(10, 4, 16) == 5600


def test_question_flops_sums_windows_at_their_exit_layers():
    assert question_flops([10, 6], [3, 1], 4, 16) == 3 * layer_flops(10, 4, 16) + layer_flops(6, 4, 16)


def test_peak_and_bound():
    peak = measure_matmul_peak(n=64, repeats=2)
    assert peak.gflops_per_s > 0 and peak.best_ms > 0
    row = roofline_row("x", peak.gflops_per_s * 1e9 * 2e-3, 4.0, peak)  # 2 ms of work at the peak
    assert row.latency_bound_ms == pytest.approx(2.0) and row.distance_x == pytest.approx(2.0)
    with pytest.raises(ValueError):
        measure_matmul_peak(n=0)
