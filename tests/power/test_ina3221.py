"""INA3221 through sysfs: fixture trees of the JetPack 4 (ina3221x, power files) and JetPack 5+ (hwmon, P = V * I) drivers."""

from __future__ import annotations

import pytest
from power_helpers import make_jp4_sysfs, make_jp5_sysfs

from elma.errors import PowerMeterUnavailable, PowerReadError
from elma.power import EnergyMonitor, Ina3221Sysfs, PowerSampler
from elma.power.ina3221 import discover_rails

# TX2 on JetPack 4: 0x40 = GPU, SOC, WIFI; 0x41 = IN, CPU, DDR (JETSON-NOTES, INA3221 sysfs)
TX2_JP4 = {
    "0-0040/iio:device0": [("VDD_SYS_GPU", 153), ("VDD_SYS_SOC", 536), ("VDD_4V0_WIFI", 633)],
    "0-0041/iio:device1": [("VDD_IN", 3140), ("VDD_SYS_CPU", 536), ("VDD_SYS_DDR", 557)],
}
NANO_JP4 = {"6-0040/iio:device0": [("POM_5V_IN", 1750), ("POM_5V_GPU", 0), ("POM_5V_CPU", 366)]}
# AGX Orin on JetPack 5+: 0x40 = VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0; 0x41 = NC, VDDQ_VDD2_1V8AO, NC
AGX_ORIN_JP5 = {
    "1-0040/hwmon/hwmon3": [("VDD_GPU_SOC", 19120, 120), ("VDD_CPU_CV", 19136, 20), ("VIN_SYS_5V0", 5000, 805)],
    "1-0041/hwmon/hwmon4": [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5000, 60), ("NC", 0, 0)],
}
ORIN_NANO_JP6 = {"1-0040/hwmon/hwmon1": [("VDD_IN", 5080, 1043), ("VDD_CPU_GPU_CV", 5072, 152), ("VDD_SOC", 5064, 283)]}


def read_once(root):
    meter = Ina3221Sysfs(root)
    meter.start()
    return meter, meter.read()


def test_jp4_tx2_power_files(tmp_path):
    meter, sample = read_once(make_jp4_sysfs(tmp_path, TX2_JP4))
    assert sample.rail_power_mw == {"VDD_SYS_GPU": 153.0, "VDD_SYS_SOC": 536.0, "VDD_4V0_WIFI": 633.0,
                                    "VDD_IN": 3140.0, "VDD_SYS_CPU": 536.0, "VDD_SYS_DDR": 557.0}
    assert sample.total_power_mw == 3140.0  # VDD_IN, nothing added to it
    assert all(r.power_file is not None for r in meter.rails)
    assert "VDD_IN" in meter.describe()


def test_jp4_nano_total_is_pom_5v_in(tmp_path):
    _, sample = read_once(make_jp4_sysfs(tmp_path, NANO_JP4))
    assert sample.total_power_mw == 1750.0


def test_jp4_without_power_files_uses_voltage_times_current(tmp_path):
    _, sample = read_once(make_jp4_sysfs(tmp_path, NANO_JP4, power_files=False))
    assert sample.rail_power_mw == {"POM_5V_IN": 5000 * 350 / 1000, "POM_5V_GPU": 0.0, "POM_5V_CPU": 5000 * 73 / 1000}


def test_jp5_agx_orin_hwmon(tmp_path):
    meter, sample = read_once(make_jp5_sysfs(tmp_path, AGX_ORIN_JP5))
    assert [r.rail for r in meter.rails] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]  # NC, in7 skipped
    assert sample.rail_power_mw == {"VDD_GPU_SOC": pytest.approx(2294.4), "VDD_CPU_CV": pytest.approx(382.72),
                                    "VIN_SYS_5V0": pytest.approx(4025.0), "VDDQ_VDD2_1V8AO": pytest.approx(300.0)}
    # VDDQ_VDD2_1V8AO is fed by VIN_SYS_5V0: not added
    assert sample.total_power_mw == pytest.approx(2294.4 + 382.72 + 4025.0)


def test_jp6_orin_nano_total_is_vdd_in(tmp_path):
    _, sample = read_once(make_jp5_sysfs(tmp_path, ORIN_NANO_JP6))
    assert sample.total_power_mw == pytest.approx(5080 * 1043 / 1000)


def test_duplicate_labels_stay_apart(tmp_path):
    devices = {"1-0040/hwmon/hwmon1": [("VDD_IN", 5000, 100)], "1-0041/hwmon/hwmon2": [("VDD_IN", 5000, 200)]}
    rails = discover_rails(make_jp5_sysfs(tmp_path, devices, sum_channel=False))
    assert [r.rail for r in rails] == ["VDD_IN", "VDD_IN@1-0041"]


def test_no_rails_is_unavailable_and_says_where_it_looked(tmp_path):
    with pytest.raises(PowerMeterUnavailable, match="no INA3221 rails under .*ina3221x.*ina3221"):
        Ina3221Sysfs(tmp_path).start()


def test_unreadable_value_at_start_is_unavailable(tmp_path):
    root = make_jp4_sysfs(tmp_path, NANO_JP4)
    (root / "bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power0_input").write_text("n/a\n")
    with pytest.raises(PowerMeterUnavailable, match="unreadable"):
        Ina3221Sysfs(root).start()


def test_rail_vanishing_mid_run_is_a_read_error_and_a_gap(tmp_path):
    root = make_jp5_sysfs(tmp_path, ORIN_NANO_JP6)
    current = root / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr1_input"
    meter = Ina3221Sysfs(root)
    meter.start()
    current.unlink()
    with pytest.raises(PowerReadError, match="VDD_IN"):
        meter.read()
    current.write_text("1043\n")
    with PowerSampler(meter, interval_s=0.002, retry_s=0.002) as sampler:
        assert sampler.wait_until(sampler.clock(), 5)
        monitor = EnergyMonitor(sampler)
        monitor.begin_window("w")
        current.unlink()  # the driver went away
        deadline_s = sampler.clock() + 5
        while not sampler.gaps():
            assert sampler.clock() < deadline_s
            sampler.wait_until(sampler.clock() + 0.01, 0.01)
        current.write_text("1043\n")  # and came back
        while sampler.gaps()[0].end_s is None:
            assert sampler.clock() < deadline_s
            sampler.wait_until(sampler.clock() + 0.01, 0.01)
        m = monitor.end_window("w")
    [gap] = sampler.gaps()
    assert "VDD_IN" in gap.reason and gap.end_s > gap.start_s
    assert m.gaps and m.measured_s < m.duration_s
    assert m.mean_power_mw == pytest.approx(5080 * 1043 / 1000)
