"""Keysight E36311A over SCPI: the real PyVISA stack against pyvisa-sim, and pyvisa-py against a loopback SCPI server
(timeout and disconnect recorded as gaps). Skipped with a reason where pyvisa is not installed."""

from __future__ import annotations

import pytest
from power_helpers import E36311A_YAML

pytest.importorskip("pyvisa", reason="pyvisa not installed: pip install -e '.[dev]' (or the 'power' extra)")

from scpi_server import FakeE36311A  # noqa: E402

from elma.errors import PowerMeterUnavailable, PowerReadError  # noqa: E402
from elma.power import EnergyMonitor, KeysightScpiMeter, PowerSampler  # noqa: E402
from elma.power.keysight import channel_list, parse_idn  # noqa: E402
from elma.power.sources import parse_keysight_spec  # noqa: E402

SIM = f"{E36311A_YAML}@sim"
SIM_RESOURCES = ["TCPIP0::192.0.2.10::5025::SOCKET", "TCPIP0::192.0.2.10::inst0::INSTR", "USB0::0x2A8D::0x1102::MY59000001::0::INSTR"]


def test_scpi_strings():
    assert channel_list([1]) == "(@1)" and channel_list([1, 2, 3]) == "(@1,2,3)"
    assert parse_idn("Keysight Technologies,E36311A,MY1,1.0\n") == ("Keysight Technologies", "E36311A", "MY1", "1.0")
    assert parse_idn("junk") == ("junk", "", "", "")
    assert parse_keysight_spec("TCPIP0::10.0.0.5::5025::SOCKET@1,2") == ("TCPIP0::10.0.0.5::5025::SOCKET", (1, 2))
    assert parse_keysight_spec("USB0::0x2A8D::0x1102::MY1::0::INSTR") == ("USB0::0x2A8D::0x1102::MY1::0::INSTR", (1,))
    with pytest.raises(ValueError, match="channels must be"):
        KeysightScpiMeter("TCPIP0::x::5025::SOCKET", channels=(4,))
    with pytest.raises(ValueError, match="channels must be"):
        parse_keysight_spec("TCPIP0::x::5025::SOCKET@one")


@pytest.mark.parametrize("resource", SIM_RESOURCES, ids=["socket", "vxi11", "usb"])
def test_pyvisa_sim_round_trip(resource):
    pytest.importorskip("pyvisa_sim", reason="pyvisa-sim not installed: pip install -e '.[dev]'")
    meter = KeysightScpiMeter(resource, channels=(1, 2, 3), visa_library=SIM)
    with meter:
        sample = meter.read()
        assert meter.identity[:2] == ("Keysight Technologies", "E36311A")
    assert sample.rail_power_mw == {"CH1": pytest.approx(6000.0), "CH2": pytest.approx(3000.0), "CH3": pytest.approx(500.0)}
    assert sample.total_power_mw == pytest.approx(9500.0)
    assert "E36311A" in meter.describe()


def test_pyvisa_sim_single_channel_through_the_sampler():
    pytest.importorskip("pyvisa_sim", reason="pyvisa-sim not installed: pip install -e '.[dev]'")
    meter = KeysightScpiMeter(SIM_RESOURCES[0], channels=(1,), visa_library=SIM)
    with PowerSampler(meter, interval_s=0.002) as sampler:
        sampler.wait_until(sampler.clock(), 5)
        monitor = EnergyMonitor(sampler)
        monitor.begin_window("q")
        m = monitor.end_window("q", end_s=sampler.clock() + 0.02)
    assert m.mean_power_mw == pytest.approx(6000.0) and m.energy_mj == pytest.approx(6000.0 * m.duration_s)
    assert m.rail_energy_mj.keys() == {"CH1"}


def test_pyvisa_sim_wrong_instrument_is_refused():
    pytest.importorskip("pyvisa_sim", reason="pyvisa-sim not installed: pip install -e '.[dev]'")
    with pytest.raises(PowerMeterUnavailable, match="34465A.*not a Keysight E36300-family supply"):
        KeysightScpiMeter("TCPIP0::192.0.2.11::5025::SOCKET", visa_library=SIM).start()


@pytest.fixture
def supply():
    pytest.importorskip("pyvisa_py", reason="pyvisa-py not installed: pip install -e '.[dev]'")
    server = FakeE36311A().start()
    yield server
    server.stop()


def test_loopback_socket_round_trip(supply):
    meter = KeysightScpiMeter(supply.resource, channels=(1, 2), visa_library="@py", timeout_ms=500)
    with meter:
        sample = meter.read()
    assert sample.rail_power_mw == {"CH1": pytest.approx(5000.0), "CH2": pytest.approx(3000.0)}
    assert sample.total_power_mw == pytest.approx(8000.0)
    assert supply.queries[:3] == ["*IDN?", "MEAS:VOLT? (@1,2)", "MEAS:CURR? (@1,2)"]


def test_loopback_timeout_is_a_read_error(supply):
    meter = KeysightScpiMeter(supply.resource, visa_library="@py", timeout_ms=100)
    with meter:
        supply.stall_queries = 1
        with pytest.raises(PowerReadError, match="TMO|[Tt]imeout"):
            meter.read()


def test_loopback_refused_connection_is_unavailable(supply):
    resource = supply.resource
    supply.stop()
    with pytest.raises(PowerMeterUnavailable, match="cannot talk to"):
        KeysightScpiMeter(resource, visa_library="@py", timeout_ms=200).start()


def test_loopback_wrong_identity_is_refused():
    pytest.importorskip("pyvisa_py", reason="pyvisa-py not installed")
    server = FakeE36311A(idn="Rigol Technologies,DP832,DP8A0000,00.01.14").start()
    try:
        with pytest.raises(PowerMeterUnavailable, match="DP832"):
            KeysightScpiMeter(server.resource, visa_library="@py", timeout_ms=500).start()
    finally:
        server.stop()


def _wait(sampler, condition, what):
    deadline_s = sampler.clock() + 10
    while not condition():
        assert sampler.clock() < deadline_s, f"timed out waiting for {what}"
        sampler.wait_until(sampler.clock() + 0.01, 0.02)


def test_loopback_timeout_and_disconnect_are_gaps_and_the_run_goes_on(supply):
    meter = KeysightScpiMeter(supply.resource, channels=(1,), visa_library="@py", timeout_ms=100)
    with PowerSampler(meter, interval_s=0.005, retry_s=0.01) as sampler:
        monitor = EnergyMonitor(sampler)
        _wait(sampler, lambda: sampler.sample_count >= 2, "first samples")
        monitor.begin_window("run")
        supply.stall_queries = 1  # one query is never answered: timeout
        _wait(sampler, lambda: len(sampler.gaps()) == 1 and sampler.gaps()[0].end_s is not None, "the timeout gap to close")
        count = sampler.sample_count
        _wait(sampler, lambda: sampler.sample_count >= count + 2, "samples after the timeout")
        supply.drop_clients()  # the supply drops the connection
        _wait(sampler, lambda: len(sampler.gaps()) == 2 and sampler.gaps()[1].end_s is not None, "the disconnect gap to close")
        run = monitor.end_window("run")
    timeout_gap, disconnect_gap = sampler.gaps()
    assert "TMO" in timeout_gap.reason or "imeout" in timeout_gap.reason
    assert disconnect_gap.start_s > timeout_gap.end_s
    assert supply.connections >= 3  # reopened after each failure
    assert len(run.gaps) == 2
    assert 0 < run.measured_s < run.duration_s
    assert run.mean_power_mw == pytest.approx(5000.0)  # 5 V x 1 A, over the measured time only
