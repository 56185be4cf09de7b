"""The background sampler: gaps on failure, reopening, bounded buffer, pacing, atexit, windows on the live clock."""

from __future__ import annotations

import threading
import time

import pytest

from elma.errors import PowerMeterUnavailable, PowerReadError
from elma.power import EnergyMonitor, Gap, NullMeter, PowerMeter, PowerSample, PowerSampler, WindowSpan
from elma.power import sampler as sampler_module


class ScriptedMeter(PowerMeter):
    """Yields a fixed script of samples and failures, then ``None`` (a finite source)."""

    name = "scripted"
    self_paced = True

    def __init__(self, script, fail_starts=0):
        self.script = list(script)
        self.fail_starts = fail_starts
        self.starts = 0
        self.stops = 0

    def start(self):
        self.starts += 1
        if 1 < self.starts <= 1 + self.fail_starts:
            raise PowerMeterUnavailable("still down")

    def stop(self):
        self.stops += 1

    def read(self):
        if not self.script:
            return None
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        t, p = item
        return PowerSample(float(t), {"VDD_IN": float(p)}, float(p))


def run_to_end(meter, **kwargs):
    sampler = PowerSampler(meter, retry_s=0.0, **kwargs)
    sampler.start()
    sampler._thread.join(10)
    assert not sampler.running
    sampler.stop()
    return sampler


def test_failure_is_a_gap_from_last_to_next_sample():
    meter = ScriptedMeter([(0, 100), (1, 100), PowerReadError("VI_ERROR_TMO"), (3, 100), (4, 100)], fail_starts=2)
    sampler = run_to_end(meter)
    assert sampler.exhausted
    assert [s.timestamp_s for s in sampler.trace().samples] == [0, 1, 3, 4]
    assert sampler.gaps() == [Gap(1.0, 3.0, "VI_ERROR_TMO")]
    assert meter.starts == 1 + 2 + 1  # the first start, two failed reopenings, the one that worked
    assert sampler.failures == 3
    m = EnergyMonitor(sampler).measure(WindowSpan("w", 0.0, 4.0))
    assert m.measured_s == pytest.approx(2.0) and m.energy_mj == pytest.approx(200.0)


def test_consecutive_failures_make_one_gap_and_a_backend_bug_is_still_only_a_gap():
    script = [(0, 1), RuntimeError("bug in a backend"), PowerReadError("again"), (5, 1)]
    sampler = run_to_end(ScriptedMeter(script))
    assert sampler.gaps() == [Gap(0.0, 5.0, "bug in a backend")]


def test_failure_before_any_sample_starts_at_the_sampler_start():
    sampler = run_to_end(ScriptedMeter([PowerReadError("no answer"), (1e9, 1)]))
    [gap] = sampler.gaps()
    assert gap.start_s == sampler.started_s and gap.end_s == 1e9


def test_gap_still_open_at_stop_ends_at_stop():
    class Dead(ScriptedMeter):
        def start(self):
            self.starts += 1
            if self.starts > 1:
                raise PowerMeterUnavailable("cable pulled")

    sampler = PowerSampler(Dead([(0, 1), PowerReadError("connection lost")]), retry_s=0.01)
    sampler.start()
    deadline = time.monotonic() + 5
    while not sampler.gaps():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert sampler.gaps()[0].end_s is None  # open while the source is down
    sampler.stop()
    [gap] = sampler.gaps()
    assert gap.start_s == 0.0 and gap.end_s is not None and gap.reason == "connection lost"


def test_bounded_buffer_drops_the_oldest():
    sampler = run_to_end(ScriptedMeter([(t, t) for t in range(50)]), max_samples=8)
    samples = sampler.trace().samples
    assert [s.timestamp_s for s in samples] == list(range(42, 50))
    assert sampler.dropped_samples == 42 and sampler.sample_count == 8
    assert [s.timestamp_s for s in sampler.trace(44.5, 46.5).samples] == [44, 45, 46, 47]


def test_out_of_order_sample_is_dropped():
    sampler = run_to_end(ScriptedMeter([(0, 1), (2, 1), (1, 1), (3, 1)]))
    assert [s.timestamp_s for s in sampler.trace().samples] == [0, 2, 3]


def test_cumulative_energy():
    sampler = run_to_end(ScriptedMeter([(0, 1000), (1, 3000), (2, 3000)]))
    assert sampler.read_cumulative_mj() == pytest.approx(2000 + 3000)
    assert run_to_end(NullMeter()).read_cumulative_mj() is None


def test_validation():
    with pytest.raises(ValueError, match="interval_s"):
        PowerSampler(NullMeter(), interval_s=0)
    with pytest.raises(ValueError, match="max_samples"):
        PowerSampler(NullMeter(), max_samples=1)
    sampler = PowerSampler(NullMeter()).start()
    with pytest.raises(ValueError, match="already started"):
        sampler.start()
    sampler.stop()
    sampler.stop()  # idempotent


def test_unavailable_meter_raises_in_the_caller():
    class Absent(ScriptedMeter):
        def start(self):
            raise PowerMeterUnavailable("no INA3221 rails")

    with pytest.raises(PowerMeterUnavailable, match="no INA3221"):
        PowerSampler(Absent([])).start()


class ClockMeter(PowerMeter):
    """A live meter paced by the sampler: constant power, stamped with time.monotonic()."""

    name = "clock"
    self_paced = False

    def __init__(self, power_mw=2500.0):
        self.power_mw = power_mw
        self.reads = 0
        self.threads = set()

    def read(self):
        self.reads += 1
        self.threads.add(threading.current_thread().name)
        return PowerSample(time.monotonic(), {"VDD_IN": self.power_mw}, self.power_mw)


def test_live_windows_wait_for_the_edge_sample_and_are_exact(monkeypatch):
    registered = []
    monkeypatch.setattr(sampler_module.atexit, "register", registered.append)
    monkeypatch.setattr(sampler_module.atexit, "unregister", registered.remove)
    meter = ClockMeter()
    with PowerSampler(meter, interval_s=0.005) as sampler:
        assert registered == [sampler.stop]
        assert sampler.wait_until(sampler.clock(), 5)
        monitor = EnergyMonitor(sampler)
        monitor.begin_window("question")
        monitor.begin_window("layer")
        time.sleep(0.03)
        layer = monitor.end_window("layer")
        question = monitor.end_window("question")
    assert registered == []  # stop() unregistered itself
    assert meter.threads == {"elma-power-clock"}
    for m in (layer, question):
        assert m.measured_s == pytest.approx(m.duration_s, rel=1e-9)  # both edges interpolated
        assert m.energy_mj == pytest.approx(2500.0 * m.duration_s, rel=1e-9)
        assert m.sample_count >= 1
    # timestamps increase and reads are paced (not a busy loop): at most one read per ~interval
    samples = sampler.trace().samples
    assert all(b.timestamp_s > a.timestamp_s for a, b in zip(samples, samples[1:]))
    span_s = samples[-1].timestamp_s - samples[0].timestamp_s
    assert len(samples) <= span_s / 0.005 + 3


def test_end_window_without_waiting_is_provisional_then_final():
    meter = ClockMeter(1000.0)
    with PowerSampler(meter, interval_s=0.05) as sampler:
        sampler.wait_until(sampler.clock(), 5)
        monitor = EnergyMonitor(sampler)
        monitor.begin_window("layer")
        time.sleep(0.01)
        provisional = monitor.end_window("layer", wait_s=0)
        assert sampler.wait_until(provisional.end_s, 5)
    final = monitor.measure(monitor.spans[0])
    assert provisional.measured_s <= final.measured_s
    assert final.energy_mj == pytest.approx(1000.0 * final.duration_s, rel=1e-9)
