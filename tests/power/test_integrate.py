"""Energy integration is exact on profiles with known integrals; windows, gaps, and the monitor's key rules."""

from __future__ import annotations

import math
import random

import pytest

from elma.power import EnergyMonitor, Gap, PowerSample, PowerTrace, integrate, measure


def trace_of(times, powers, gaps=(), rails=None):
    samples = []
    for i, (t, p) in enumerate(zip(times, powers)):
        rail_power_mw = {"VDD_IN": p} if rails is None else rails[i]
        samples.append(PowerSample(t, rail_power_mw, p))
    return PowerTrace(samples, list(gaps), "synthetic")


def test_constant_power():
    times = [i * 0.1 for i in range(101)]  # 0..10 s
    m = measure(trace_of(times, [4000.0] * 101), "w", 2.05, 7.33)
    assert m.energy_mj == pytest.approx(4000.0 * (7.33 - 2.05), rel=1e-12)
    assert m.mean_power_mw == pytest.approx(4000.0, rel=1e-12)
    assert m.peak_power_mw == 4000.0
    assert m.measured_s == pytest.approx(m.duration_s, rel=1e-12) and m.coverage == pytest.approx(1.0)
    assert m.sample_count == sum(1 for t in times if 2.05 <= t <= 7.33)
    assert m.rail_energy_mj["VDD_IN"] == pytest.approx(m.energy_mj, rel=1e-12)


def test_ramp_is_exact_with_interpolated_edges():
    # P(t) = 1000 + 300 t mW: a straight line, which the trapezoid rule integrates exactly at any sampling
    times = [i * 0.25 for i in range(41)]
    m = measure(trace_of(times, [1000 + 300 * t for t in times]), "ramp", 1.1, 8.9)
    exact_mj = 1000 * (8.9 - 1.1) + 150 * (8.9 ** 2 - 1.1 ** 2)
    assert m.energy_mj == pytest.approx(exact_mj, rel=1e-12)
    assert m.peak_power_mw == pytest.approx(1000 + 300 * 8.9, rel=1e-12)  # interpolated at the end edge


def test_ramp_with_jittered_sampling_is_exact():
    rng = random.Random(7)
    times, t = [], 0.0
    while t < 20:
        times.append(t)
        t += 0.1 + rng.uniform(-0.07, 0.07)  # irregular intervals, 30..170 ms
    powers = [2000 - 50 * t for t in times]
    for start_s, end_s in [(0.0, times[-1]), (3.333, 3.334), (5.01, 17.77), (times[10], times[20])]:
        m = measure(trace_of(times, powers), "jitter", start_s, end_s)
        exact_mj = 2000 * (end_s - start_s) - 25 * (end_s ** 2 - start_s ** 2)
        assert m.energy_mj == pytest.approx(exact_mj, rel=1e-11), (start_s, end_s)


def test_step_inside_window_sampled_at_the_step_is_exact():
    # 1 W until t=4, then 3 W: the source saw the step (two samples at t=4, as when it reads right at the edge)
    times = [0, 1, 2, 3, 4, 4, 5, 6, 7, 8]
    powers = [1000] * 5 + [3000] * 5
    m = measure(trace_of(times, powers), "step", 2.5, 6.5)
    assert m.energy_mj == pytest.approx(1000 * 1.5 + 3000 * 2.5, rel=1e-12)
    assert m.peak_power_mw == 3000


def test_step_between_samples_is_the_trapezoid_of_the_straddling_segment():
    # the step falls at t=4.5 between samples at 4 and 5: the trapezoid charges the mean of both levels over
    # that second, so the error is (3000 - 1000) * (0.5 - 0.5) = 0 for a step at the middle, and bounded otherwise
    times = list(range(10))
    powers = [1000.0] * 5 + [3000.0] * 5
    m = measure(trace_of(times, powers), "step", 2.0, 7.0)
    assert m.energy_mj == pytest.approx(1000 * 2 + 2000 * 1 + 3000 * 2, rel=1e-12)
    true_mj_for_step_at = {4.2: 1000 * 2.2 + 3000 * 2.8, 4.8: 1000 * 2.8 + 3000 * 2.2}
    for true_mj in true_mj_for_step_at.values():
        assert abs(m.energy_mj - true_mj) <= (3000 - 1000) * 1.0 / 2  # at most half a period of the jump


def test_window_between_two_samples():
    m = measure(trace_of([0.0, 1.0], [1000.0, 2000.0]), "short", 0.25, 0.5)
    assert m.sample_count == 0
    assert m.energy_mj == pytest.approx((1250 + 1500) / 2 * 0.25, rel=1e-12)
    assert m.peak_power_mw == pytest.approx(1500.0)


def test_window_beyond_the_samples_measures_only_the_covered_part():
    m = measure(trace_of([1.0, 2.0, 3.0], [500.0, 500.0, 500.0]), "edge", 0.0, 5.0)
    assert m.measured_s == pytest.approx(2.0)
    assert m.energy_mj == pytest.approx(1000.0)
    assert m.coverage == pytest.approx(0.4)
    assert m.gaps == []  # time outside the samples is not a failure


def test_gap_is_not_integrated():
    times = [0, 1, 2, 5, 6]
    trace = trace_of(times, [1000.0] * 5, gaps=[Gap(2.0, 5.0, "supply timed out")])
    m = measure(trace, "gap", 0.5, 5.5)
    assert m.measured_s == pytest.approx(2.0)  # 0.5..2 and 5..5.5
    assert m.energy_mj == pytest.approx(2000.0)
    assert m.gaps == [Gap(2.0, 5.0, "supply timed out")]
    inside = measure(trace, "inside", 3.0, 4.0)
    assert inside.energy_mj is None and inside.mean_power_mw is None and inside.measured_s == 0
    assert inside.gaps == [Gap(3.0, 4.0, "supply timed out")]  # clipped to the window


def test_open_gap_blocks_everything_after_its_start():
    trace = trace_of([0, 1, 2], [100.0] * 3, gaps=[Gap(1.0, None, "tegrastats exited")])
    m = measure(trace, "w", 0.0, 10.0)
    assert m.measured_s == pytest.approx(1.0)
    assert m.gaps == [Gap(1.0, 10.0, "tegrastats exited")]


def test_no_total_means_no_energy_but_rail_figures():
    samples = [PowerSample(t, {"VDD_CPU": 200.0 + t}, None) for t in (0.0, 1.0, 2.0)]
    m = measure(PowerTrace(samples), "w", 0.0, 2.0)
    assert m.energy_mj is None and m.peak_power_mw is None and m.measured_s == 0
    assert m.rail_energy_mj == {"VDD_CPU": pytest.approx(402.0)}
    assert m.rail_mean_power_mw == {"VDD_CPU": pytest.approx(201.0)}
    assert m.rail_peak_power_mw == {"VDD_CPU": 202.0}


def test_rail_missing_in_some_samples_is_skipped_there():
    rails = [{"A": 10.0, "B": 1.0}, {"A": 10.0}, {"A": 10.0, "B": 1.0}, {"A": 10.0, "B": 1.0}]
    m = measure(trace_of([0, 1, 2, 3], [11.0, 10.0, 11.0, 11.0], rails=rails), "w", 0.0, 3.0)
    assert m.rail_energy_mj["A"] == pytest.approx(30.0)
    assert m.rail_energy_mj["B"] == pytest.approx(1.0)  # only 2..3 has B at both ends


def test_integrate_validates():
    with pytest.raises(ValueError, match="ends before it starts"):
        integrate([0, 1], [1, 1], 1.0, 0.5)
    with pytest.raises(ValueError, match="differ in length"):
        integrate([0, 1], [1], 0.0, 1.0)
    with pytest.raises(ValueError, match="time order"):
        PowerTrace([PowerSample(1.0, {}, None), PowerSample(0.5, {}, None)])
    assert integrate([], [], 0.0, 1.0).measured_s == 0
    assert integrate([0.5], [7.0], 0.0, 1.0).peak_power_mw == 7.0


def test_monitor_nested_windows_over_a_trace():
    times = [i * 0.5 for i in range(21)]
    trace = trace_of(times, [1000 + 100 * t for t in times])
    monitor = EnergyMonitor(trace)
    monitor.begin_window("question", start_s=1.0)
    monitor.begin_window("layer-1", start_s=1.0)
    layer1 = monitor.end_window("layer-1", end_s=1.3)
    monitor.begin_window("layer-2", start_s=1.3)
    layer2 = monitor.end_window("layer-2", end_s=2.0)
    question = monitor.end_window("question", end_s=2.0)
    assert layer1.energy_mj + layer2.energy_mj == pytest.approx(question.energy_mj, rel=1e-12)
    assert question.energy_mj == pytest.approx(1000 * 1.0 + 50 * (4.0 - 1.0), rel=1e-12)
    assert [s.key for s in monitor.spans] == ["layer-1", "layer-2", "question"]
    assert [m.energy_mj for m in monitor.measure_all()] == [layer1.energy_mj, layer2.energy_mj, question.energy_mj]


def test_monitor_key_rules():
    monitor = EnergyMonitor(trace_of([0, 1], [1.0, 1.0]))
    monitor.begin_window("a", start_s=0.0)
    with pytest.raises(ValueError, match="already open"):
        monitor.begin_window("a", start_s=0.1)
    with pytest.raises(ValueError, match="no open measurement window 'b'"):
        monitor.end_window("b", end_s=1.0)
    with pytest.raises(ValueError, match="before its start"):
        monitor.end_window("a", end_s=-1.0)
    assert monitor.open_windows == ["a"]
    monitor.end_window("a", end_s=1.0)
    monitor.begin_window("a", start_s=0.0)  # a key can be reused once its window closed
    with pytest.raises(ValueError, match="no clock"):
        monitor.begin_window("c")


def test_measurement_is_a_dataclass_with_units():
    from dataclasses import asdict
    m = measure(trace_of([0, 1], [1.0, 1.0]), "w", 0.0, 1.0)
    fields = set(asdict(m))
    assert {"energy_mj", "mean_power_mw", "peak_power_mw", "duration_s", "measured_s", "sample_count"} <= fields
    assert not math.isnan(m.energy_mj)
