"""Replay CSV: exact round trip (samples, missing cells, gaps), replay through the sampler, realtime rebasing, bad files."""

from __future__ import annotations

import time

import pytest

from elma.errors import DataError, PowerMeterUnavailable
from elma.power import Gap, PowerSample, PowerSampler, PowerTrace, ReplayMeter, measure, read_trace_csv, write_trace_csv
from elma.power.replay import trace_to_csv

TRACE = PowerTrace(
    samples=[
        PowerSample(100.0, {"VDD_IN": 5299.0, "VDD_CPU_GPU_CV": 773.0, "VDD_SOC": 1424.0}, 5299.0),
        PowerSample(100.1, {"VDD_IN": 5301.5, "VDD_CPU_GPU_CV": 0.1 + 0.2, "VDD_SOC": 1424.0}, 5301.5),
        PowerSample(100.2, {"VDD_CPU_GPU_CV": 780.0}, None),  # a rail and the total missing
        PowerSample(100.9, {"VDD_IN": 5290.0, "VDD_CPU_GPU_CV": 775.0, "VDD_SOC": 1420.0}, 5290.0),
        PowerSample(101.0, {"VDD_IN": 5280.0, "VDD_CPU_GPU_CV": 770.0, "VDD_SOC": 1410.0}, 5280.0),
    ],
    gaps=[Gap(100.2, 100.9, 'tegrastats exited with status 1: "quoted", commas, too')],
    source="tegrastats (tegrastats --interval 100)",
)


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "trace.csv"
    write_trace_csv(path, TRACE)
    back = read_trace_csv(path)
    assert back.samples == TRACE.samples
    assert back.gaps == TRACE.gaps
    assert back.source == TRACE.source
    assert trace_to_csv(back) == path.read_text()
    first_lines = path.read_text().splitlines()[:4]
    assert first_lines[0] == "#elma-power-trace,1"
    assert first_lines[3] == "timestamp_s,total_power_mw,VDD_IN_power_mw,VDD_CPU_GPU_CV_power_mw,VDD_SOC_power_mw"


def test_open_gap_round_trips(tmp_path):
    trace = PowerTrace([PowerSample(0.0, {"CH1": 1.0}, 1.0)], [Gap(0.0, None, "cable pulled")], "keysight")
    write_trace_csv(tmp_path / "t.csv", trace)
    assert read_trace_csv(tmp_path / "t.csv").gaps == [Gap(0.0, None, "cable pulled")]


def test_replay_through_the_sampler_reproduces_samples_and_gaps(tmp_path):
    path = tmp_path / "trace.csv"
    write_trace_csv(path, TRACE)
    with PowerSampler(ReplayMeter(path), retry_s=0.0) as sampler:
        sampler._thread.join(5)
    replayed = sampler.trace()
    assert sampler.exhausted
    assert replayed.samples == TRACE.samples
    assert replayed.gaps == TRACE.gaps
    original = measure(TRACE, "all", 100.0, 101.0)
    assert measure(replayed, "all", 100.0, 101.0) == original
    # total measured on 100.0..100.1 and 100.9..101.0: 100.1..100.2 lacks the total at 100.2, 100.2..100.9 is the gap
    assert original.measured_s == pytest.approx(0.2)
    assert original.rail_energy_mj["VDD_CPU_GPU_CV"] == pytest.approx((773.0 + 0.3) / 2 * 0.1 + (0.3 + 780.0) / 2 * 0.1
                                                                       + (775.0 + 770.0) / 2 * 0.1)


def test_realtime_replay_is_rebased_and_paced(tmp_path):
    samples = [PowerSample(50.0 + 0.02 * i, {"VDD_IN": 1000.0}, 1000.0) for i in range(5)]
    path = tmp_path / "t.csv"
    write_trace_csv(path, PowerTrace(samples, [], "synthetic"))
    meter = ReplayMeter(path, realtime=True)
    before_s = time.monotonic()
    meter.start()
    got = [meter.read() for _ in range(5)]
    assert meter.read() is None
    assert time.monotonic() - before_s >= 0.08 - 1e-3  # paced: the last sample is due 80 ms after the first
    offsets = [s.timestamp_s - got[0].timestamp_s for s in got]
    assert offsets == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert got[0].timestamp_s >= before_s


@pytest.mark.parametrize("text,message", [
    ("timestamp_s,total_power_mw\n1.0,2.0\n", "not an elma power trace"),
    ("#elma-power-trace,1\n", "no header row"),
    ("#elma-power-trace,1\ntime,power\n", "header must be"),
    ("#elma-power-trace,1\ntimestamp_s,total_power_mw,VDD_IN_power_mw\n1.0,abc,1\n", "'abc' is not a number"),
    ("#elma-power-trace,1\ntimestamp_s,total_power_mw\n1.0\n", "1 cells, the header has 2"),
    ("#elma-power-trace,1\ntimestamp_s,total_power_mw\n2.0,1\n1.0,1\n", "time order"),
])
def test_bad_csv_is_a_data_error(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_trace_csv(path)


def test_missing_replay_file_is_unavailable(tmp_path):
    with pytest.raises(PowerMeterUnavailable, match="not found"):
        ReplayMeter(tmp_path / "none.csv").start()


def test_stop_interrupts_a_realtime_wait(tmp_path):
    samples = [PowerSample(0.0, {"VDD_IN": 1.0}, 1.0), PowerSample(60.0, {"VDD_IN": 1.0}, 1.0)]
    path = tmp_path / "t.csv"
    write_trace_csv(path, PowerTrace(samples, [], "synthetic"))
    sampler = PowerSampler(ReplayMeter(path, realtime=True))
    sampler.start()
    assert sampler.wait_until(float("-inf"), 5)  # the first sample is in
    before_s = time.monotonic()
    sampler.stop(timeout_s=0.2)  # the thread waits 60 s for the second sample: stop() closes the meter under it
    assert time.monotonic() - before_s < 2 and not sampler.running
    assert sampler.sample_count == 1
