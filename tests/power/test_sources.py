"""--source specifications, auto-detection (and its message when nothing is there), and ``elma power sample``."""

from __future__ import annotations

import json
import shlex
import sys

import pytest
from power_helpers import TEGRASTATS_LOGS, make_fake_tegrastats, make_jp5_sysfs, tegrastats_lines

from elma.cli import main
from elma.errors import PowerMeterUnavailable
from elma.power import (
    Ina3221Sysfs,
    JtopMeter,
    KeysightScpiMeter,
    NullMeter,
    PowerConfig,
    ReplayMeter,
    TegrastatsLogMeter,
    TegrastatsMeter,
    detect_meter,
    open_meter,
    read_trace_csv,
)


def nothing_here(tmp_path, **kwargs):
    values = {"sysfs_root": str(tmp_path / "sys"), "jtop_socket": str(tmp_path / "jtop.sock"),
              "tegrastats_cmd": (str(tmp_path / "no-tegrastats"),)}
    values.update(kwargs)
    return PowerConfig(**values)


def test_open_meter_per_spec(tmp_path):
    meter = open_meter(PowerConfig(source="tegrastats", interval_ms=50, tegrastats_cmd=("sudo", "tegrastats")))
    assert isinstance(meter, TegrastatsMeter) and meter.command() == ["sudo", "tegrastats", "--interval", "50"]
    log = open_meter(PowerConfig(source="tegrastats-log:/var/log/t.log", interval_ms=200))
    assert isinstance(log, TegrastatsLogMeter) and str(log.path) == "/var/log/t.log" and log.interval_ms == 200
    assert isinstance(open_meter(PowerConfig(source="jtop")), JtopMeter)
    assert open_meter(PowerConfig(source="ina3221")).sysfs_root.as_posix() == "/sys"
    ina = open_meter(PowerConfig(source="ina3221:/mnt/board-sys"))
    assert isinstance(ina, Ina3221Sysfs) and ina.sysfs_root.as_posix() == "/mnt/board-sys"
    keysight = open_meter(PowerConfig(source="keysight:TCPIP0::10.0.0.5::inst0::INSTR@2,3", visa_timeout_ms=700))
    assert isinstance(keysight, KeysightScpiMeter)
    assert (keysight.resource, keysight.channels, keysight.timeout_ms) == ("TCPIP0::10.0.0.5::inst0::INSTR", (2, 3), 700)
    assert isinstance(open_meter(PowerConfig(source="replay:x.csv")), ReplayMeter)
    assert isinstance(open_meter(PowerConfig(source="null")), NullMeter)


@pytest.mark.parametrize("spec", ["tegrastats-log", "tegrastats-log:", "keysight", "replay:", "jtop:x", "battery", "null:1"])
def test_bad_specs(spec):
    with pytest.raises(ValueError, match="unknown power source"):
        open_meter(PowerConfig(source=spec))


def test_config_validation():
    with pytest.raises(ValueError, match="interval_ms"):
        PowerConfig(interval_ms=0)


def test_auto_says_where_it_looked(tmp_path):
    with pytest.raises(PowerMeterUnavailable) as err:
        detect_meter(nothing_here(tmp_path))
    message = str(err.value)
    for looked_for in ("ina3221x", "drivers/ina3221", "jtop.sock", "no-tegrastats", "keysight:VISA_RESOURCE", "replay:FILE.csv"):
        assert looked_for in message


def test_auto_prefers_sysfs_then_jtop_then_tegrastats(tmp_path):
    config = nothing_here(tmp_path, tegrastats_cmd=(sys.executable,))
    assert isinstance(detect_meter(config), TegrastatsMeter)
    (tmp_path / "jtop.sock").touch()
    assert isinstance(detect_meter(config), JtopMeter)
    make_jp5_sysfs(tmp_path / "sys", {"1-0040/hwmon/hwmon1": [("VDD_IN", 5000, 1000)]})
    assert isinstance(open_meter(config), Ina3221Sysfs)


def run_cli(capsys, *argv):
    code = main(["power", "sample", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_tegrastats_log_energy(tmp_path, capsys):
    # Xavier NX lines 1 s apart: VDD_IN 6140, 2763, 4067 mW -> trapezoids (6140+2763)/2 + (2763+4067)/2 mJ
    out_csv = tmp_path / "trace.csv"
    code, out, _ = run_cli(capsys, "--source", f"tegrastats-log:{TEGRASTATS_LOGS / 'xavier_nx.log'}", "--interval-ms", "1000",
                           "--csv", str(out_csv))
    assert code == 0
    report = json.loads(out)
    m = report["measurement"]
    assert (m["start_s"], m["end_s"], m["sample_count"]) == (0.0, 2.0, 3)
    assert m["energy_mj"] == pytest.approx((6140 + 2763) / 2 + (2763 + 4067) / 2)
    assert m["peak_power_mw"] == 6140.0
    assert m["rail_energy_mj"]["VDD_SOC"] == pytest.approx((1074 + 650) / 2 + (650 + 1353) / 2)
    assert report["samples"] == 3 and report["malformed_lines"] == 0
    assert [s.total_power_mw for s in read_trace_csv(out_csv).samples] == [6140.0, 2763.0, 4067.0]


def test_cli_replay_round_trip(tmp_path, capsys):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    run_cli(capsys, "--source", f"tegrastats-log:{TEGRASTATS_LOGS / 'agx_orin_jp5_jp6.log'}", "--interval-ms", "500", "--csv", str(first))
    code, out, _ = run_cli(capsys, "--source", f"replay:{first}", "--csv", str(second))
    assert code == 0
    assert read_trace_csv(second).samples == read_trace_csv(first).samples
    assert json.loads(out)["measurement"]["energy_mj"] == pytest.approx(((6755 + 12377) / 2 + (12377 + 10370) / 2) * 0.5)


def test_cli_spawns_tegrastats_for_a_duration(tmp_path, capsys):
    cmd = make_fake_tegrastats(tmp_path, tegrastats_lines("nano_jp4"))
    code, out, _ = run_cli(capsys, "--source", "tegrastats", "--tegrastats-cmd", shlex.join(cmd), "--interval-ms", "10",
                           "--duration", "0.3")
    assert code == 0
    report = json.loads(out)
    assert report["samples"] >= 2
    assert report["measurement"]["rail_peak_power_mw"]["POM_5V_IN"] == 1750.0
    assert report["measurement"]["energy_mj"] > 0


def test_cli_no_source_exits_non_zero_and_says_what_it_looked_for(tmp_path, capsys):
    code, out, err = run_cli(capsys, "--source", "auto", "--sysfs-root", str(tmp_path), "--jtop-socket", str(tmp_path / "s"),
                             "--tegrastats-cmd", str(tmp_path / "none"))
    assert code == 3 and out == "", "no source: exit 3, as elma-energy and elma-bench"
    assert err.startswith("elma power: error: no power source found") and "ina3221" in err and "jtop" in err


def test_cli_bad_source(capsys):
    code, _, err = run_cli(capsys, "--source", "battery")
    assert code == 2 and "unknown power source 'battery'" in err
