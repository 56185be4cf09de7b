"""tegrastats: every real sample line parses to the right rails, mW and total; malformed lines are counted and skipped;
a fake tegrastats script is spawned, read, killed, and its crash becomes a gap."""

from __future__ import annotations

import os
from datetime import datetime

import pytest
from power_helpers import make_fake_tegrastats, tegrastats_lines

from elma.errors import PowerMeterUnavailable, PowerReadError
from elma.power import EnergyMonitor, PowerSampler, TegrastatsLogMeter, TegrastatsMeter, parse_tegrastats_line
from elma.power.rails import total_rule_for
from elma.power.tegrastats import parse_tegrastats_lines

# (fixture file, line index) -> instantaneous rails (mW), first average, board total (mW), date prefix.
# Read off the lines by hand; the totals follow JETSON-NOTES section 1 "Which rail is the total".
EXPECTED = {
    ("tx2_jp4", 0): ({"VDD_SYS_GPU": 153, "VDD_SYS_SOC": 536, "VDD_4V0_WIFI": 633, "VDD_IN": 3140, "VDD_SYS_CPU": 536,
                      "VDD_SYS_DDR": 557}, ("VDD_SYS_GPU", 158), 3140, None),
    ("tx2_jp4", 1): ({"VDD_SYS_GPU": 152, "VDD_SYS_SOC": 687, "VDD_4V0_WIFI": 0, "VDD_IN": 3056, "VDD_SYS_CPU": 152,
                      "VDD_SYS_DDR": 883}, ("VDD_IN", 3056), 3056, None),
    ("tx2_jp4", 2): ({"VDD_SYS_GPU": 182, "VDD_SYS_SOC": 730, "VDD_4V0_WIFI": 0, "VDD_IN": 5297, "VDD_SYS_CPU": 1917,
                      "VDD_SYS_DDR": 1241}, ("VDD_SYS_CPU", 1917), 5297, None),
    ("tx2_l4t28", 0): ({"VDD_IN": 1931, "VDD_CPU": 231, "VDD_GPU": 154, "VDD_SOC": 385, "VDD_WIFI": 38, "VDD_DDR": 326},
                       ("VDD_WIFI", 38), 1931, None),
    # AGX Xavier: no input rail, the six top-level rails are summed
    ("agx_xavier_jp4", 0): ({"GPU": 463, "CPU": 618, "SOC": 2936, "CV": 0, "VDDRQ": 309, "SYS5V": 3306}, ("SOC", 2936),
                            463 + 618 + 2936 + 0 + 309 + 3306, None),
    ("agx_xavier_jp4", 1): ({"GPU": 0, "CPU": 311, "SOC": 932, "CV": 0, "VDDRQ": 621, "SYS5V": 1482}, ("SYS5V", 1482),
                            0 + 311 + 932 + 0 + 621 + 1482, None),
    ("xavier_nx", 0): ({"VDD_IN": 6140, "VDD_CPU_GPU_CV": 2706, "VDD_SOC": 1074}, ("VDD_IN", 5510), 6140, None),
    ("xavier_nx", 1): ({"VDD_IN": 2763, "VDD_CPU_GPU_CV": 650, "VDD_SOC": 650}, ("VDD_SOC", 711), 2763,
                       datetime(2024, 7, 9, 13, 31, 31)),
    ("xavier_nx", 2): ({"VDD_IN": 4067, "VDD_CPU_GPU_CV": 738, "VDD_SOC": 1353}, ("VDD_IN", 4067), 4067, None),
    # Nano: POM_5V_IN is the total; GPU and CPU are inside it
    ("nano_jp4", 0): ({"POM_5V_IN": 1750, "POM_5V_GPU": 0, "POM_5V_CPU": 366}, ("POM_5V_IN", 1628), 1750, None),
    ("nano_jp4", 1): ({"POM_5V_IN": 1022, "POM_5V_GPU": 0, "POM_5V_CPU": 204}, ("POM_5V_CPU", 204), 1022, None),
    # AGX Orin: NC dropped; VDDQ_VDD2_1V8AO is fed by VIN_SYS_5V0 and is not added
    ("agx_orin_jp5_jp6", 0): ({"VDD_GPU_SOC": 2340, "VDD_CPU_CV": 390, "VIN_SYS_5V0": 4025, "VDDQ_VDD2_1V8AO": 301},
                              ("VDDQ_VDD2_1V8AO", 301), 2340 + 390 + 4025, datetime(2025, 4, 11, 10, 36, 27)),
    ("agx_orin_jp5_jp6", 1): ({"VDD_GPU_SOC": 3205, "VDD_CPU_CV": 4405, "VIN_SYS_5V0": 4767}, ("VDD_CPU_CV", 4405),
                              3205 + 4405 + 4767, None),
    ("agx_orin_jp5_jp6", 2): ({"VDD_GPU_SOC": 4940, "VDD_CPU_CV": 988, "VIN_SYS_5V0": 4442}, ("VIN_SYS_5V0", 4442),
                              4940 + 988 + 4442, None),
    ("orin_nx_and_agx_orin_jp7", 0): ({"VDD_IN": 5299, "VDD_CPU_GPU_CV": 773, "VDD_SOC": 1424}, ("VDD_SOC", 1424), 5299, None),
    # JetPack 7: three values per rail, the first is the instantaneous one
    ("orin_nx_and_agx_orin_jp7", 1): ({"VDD_GPU_SOC": 5139, "VDD_CPU_CV": 3268, "VIN_SYS_5V0": 5500}, ("VIN_SYS_5V0", 5500),
                                      5139 + 3268 + 5500, datetime(2026, 7, 25, 9, 8, 28)),
}


def test_every_fixture_line_has_an_expectation():
    lines = {(name, i) for name in {n for n, _ in EXPECTED} for i, _ in enumerate(tegrastats_lines(name))}
    assert lines == set(EXPECTED), "each line of fixtures/tegrastats/*.log needs an entry in EXPECTED"
    assert len(EXPECTED) == 16


@pytest.mark.parametrize("name,index", sorted(EXPECTED), ids=lambda v: str(v))
def test_real_line_parses_to_rails_mw_and_total(name, index):
    rails_mw, (avg_rail, avg_mw), total_mw, wallclock = EXPECTED[(name, index)]
    parsed = parse_tegrastats_line(tegrastats_lines(name)[index])
    assert parsed is not None
    assert parsed.rail_power_mw == {k: float(v) for k, v in rails_mw.items()}
    assert list(parsed.rail_power_mw) == list(rails_mw), "rails keep the order tegrastats prints them in"
    assert parsed.rail_avg_power_mw[avg_rail] == avg_mw
    assert parsed.wallclock == wallclock
    rule = total_rule_for(parsed.rail_power_mw)
    assert rule is not None and rule.total_mw(parsed.rail_power_mw) == total_mw


def test_units_and_spacing_variants():
    watts = parse_tegrastats_line("RAM 1/2MB VDD_IN 5.25W/5.5W VDD_SOC 1424mW/1424mW")
    assert watts.rail_power_mw == {"VDD_IN": 5250.0, "VDD_SOC": 1424.0}
    assert watts.rail_avg_power_mw["VDD_IN"] == 5500.0
    spaced = parse_tegrastats_line("  07-09-2024 13:31:31   RAM 3168/6851MB\t VDD_IN   2763mW/2846mW    VDD_SOC\t650mW/711mW  ")
    assert spaced.rail_power_mw == {"VDD_IN": 2763.0, "VDD_SOC": 650.0}
    assert spaced.wallclock == datetime(2024, 7, 9, 13, 31, 31)


@pytest.mark.parametrize("line", [
    "",
    "RAM 2020/7852MB (lfb 1164x4MB) SWAP 0/3926MB CPU [9%@345,off] EMC_FREQ 0% GR3D_FREQ 0%@[305,305] APE 150",
    "RAM 2020/7852MB VDD_IN 31x0mW/3208mW VDD_SOC 650mW/711mW",  # a corrupted value spoils the whole line
    "RAM 2020/7852MB VDD_SYS_GPU 153/158 VDD_IN 3140/",  # cut off mid-value (a log being written)
    "13-45-2024 10:00:00 RAM 1/2MB VDD_IN 1000mW/1000mW",  # impossible date prefix
])
def test_malformed_lines_are_none(line):
    assert parse_tegrastats_line(line) is None


def test_malformed_lines_counted_not_fatal():
    lines = tegrastats_lines("tx2_jp4") + ["garbage", "", "VDD_IN 31x0/32"] + tegrastats_lines("nano_jp4")
    parsed, malformed = parse_tegrastats_lines(lines)
    assert len(parsed) == 5 and malformed == 2


def test_log_meter_ticks_count_malformed_lines(tmp_path):
    lines = tegrastats_lines("xavier_nx")
    log = tmp_path / "tegrastats.log"
    log.write_text("\n".join([lines[0], "not a tegrastats line", "", lines[1], lines[2][: lines[2].index("VDD_IN") + 9]]) + "\n")
    meter = TegrastatsLogMeter(log, interval_ms=250)
    with meter:
        samples = []
        while True:
            sample = meter.read()
            if sample is None:
                break
            samples.append(sample)
    # line 2 is malformed but still took its tick; the blank line is not a tick; the cut last line is malformed
    assert [s.timestamp_s for s in samples] == [0.0, 0.5]
    assert [s.total_power_mw for s in samples] == [6140.0, 2763.0]
    assert meter.lines == 4 and meter.malformed_lines == 2
    assert (meter.first_wallclock, meter.first_wallclock_at_s) == (datetime(2024, 7, 9, 13, 31, 31), 0.5)


def test_log_meter_missing_file(tmp_path):
    with pytest.raises(PowerMeterUnavailable, match="cannot read tegrastats log"):
        TegrastatsLogMeter(tmp_path / "missing.log", interval_ms=100).start()


def test_spawned_fake_tegrastats(tmp_path):
    cmd = make_fake_tegrastats(tmp_path, tegrastats_lines("agx_orin_jp5_jp6"))
    meter = TegrastatsMeter(cmd, interval_ms=10, read_timeout_s=5)
    assert meter.command()[-2:] == ["--interval", "10"]
    meter.start()
    pid = meter._proc.pid
    try:
        samples = [meter.read() for _ in range(4)]
    finally:
        meter.stop()
    assert [s.total_power_mw for s in samples] == [6755.0, 12377.0, 10370.0, 6755.0]
    assert all(b.timestamp_s >= a.timestamp_s for a, b in zip(samples, samples[1:]))
    assert meter._proc is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the process was terminated and reaped


def test_missing_command_is_unavailable(tmp_path):
    with pytest.raises(PowerMeterUnavailable, match="cannot run"):
        TegrastatsMeter([str(tmp_path / "no-such-tegrastats")]).start()


def test_command_that_exits_is_unavailable_with_its_stderr(tmp_path):
    script = tmp_path / "tegrastats"
    script.write_text("import sys\nsys.stderr.write('tegrastats: permission denied\\n')\nsys.exit(1)\n")
    import sys
    with pytest.raises(PowerMeterUnavailable, match="exited with status 1: tegrastats: permission denied"):
        TegrastatsMeter([sys.executable, str(script)], interval_ms=10).start()


def test_stream_without_power_rails_fails(tmp_path):
    cmd = make_fake_tegrastats(tmp_path, ["RAM 1/2MB CPU [1%@100] EMC_FREQ 0%"])
    with pytest.raises(PowerMeterUnavailable, match="in a row had no power rails"):
        TegrastatsMeter(cmd, interval_ms=1, read_timeout_s=5).start()


def test_read_after_stop_raises(tmp_path):
    with pytest.raises(PowerReadError):
        TegrastatsMeter(["tegrastats"]).read()


def test_crash_mid_run_is_a_gap_and_tegrastats_restarts(tmp_path):
    lines = tegrastats_lines("orin_nx_and_agx_orin_jp7")[:1]  # VDD_IN 5299 mW, constant
    cmd = make_fake_tegrastats(tmp_path, lines, die_after=3)
    sampler = PowerSampler(TegrastatsMeter(cmd, interval_ms=10, read_timeout_s=5), retry_s=0.02)
    with sampler:
        monitor = EnergyMonitor(sampler)
        monitor.begin_window("run")
        deadline_s = sampler.clock() + 10
        while not (sampler.gaps() and sampler.gaps()[0].end_s is not None and sampler.sample_count >= 6):
            assert sampler.clock() < deadline_s, "the fake tegrastats did not crash and come back in time"
            sampler.wait_until(sampler.clock() + 0.02, 0.05)
        run = monitor.end_window("run")
    assert (tmp_path / "runs").read_text() == "2"
    [gap] = sampler.gaps()
    assert "exited with status 3" in gap.reason and "simulated crash" in gap.reason
    assert gap.end_s > gap.start_s
    assert run.gaps and run.gaps[0].start_s == gap.start_s
    # the gap is not integrated: energy is the constant power times the measured time only
    assert run.measured_s < run.duration_s
    assert run.energy_mj == pytest.approx(5299.0 * run.measured_s, rel=1e-9)
    assert run.peak_power_mw == 5299.0
