"""jtop: a stand-in ``jtop`` module checks the mapping (rails, totals, errors); the real jetson-stats is not installed in
dev (its installer manages a systemd service), so the one test that needs it skips with that reason."""

from __future__ import annotations

import sys
import types

import pytest

from elma.errors import PowerMeterUnavailable, PowerReadError
from elma.power import JtopMeter

# jetson.power as jetson-stats 4.x publishes it on an AGX Orin (JETSON-NOTES section 2); numbers made up
AGX_ORIN_POWER = {
    "rail": {
        "VDD_GPU_SOC": {"online": True, "type": "INA3221", "volt": 19120, "curr": 120, "power": 2294, "avg": 2290},
        "VDD_CPU_CV": {"online": True, "type": "INA3221", "volt": 19136, "curr": 20, "power": 382, "avg": 380},
        "VIN_SYS_5V0": {"online": True, "type": "INA3221", "volt": 5000, "curr": 805, "power": 4025, "avg": 4000},
        "VDDQ_VDD2_1V8AO": {"online": True, "type": "INA3221", "volt": 5000, "curr": 60, "power": 300, "avg": 300},
        "NC": {"online": True, "type": "INA3221", "volt": 0, "curr": 0, "power": 0, "avg": 0},
        "OFFLINE_RAIL": {"online": False, "type": "INA3221", "power": 9999},
    },
    "tot": {"power": 7001, "avg": 6970},  # jtop's sum of all rails: counts VDDQ_VDD2_1V8AO twice
}


def fake_jtop_module(power=None, start_error=None, updates=3):
    module = types.ModuleType("jtop")

    class JtopException(Exception):
        pass

    class FakeJtop:
        instances = []

        def __init__(self, interval=1.0):
            self.interval = interval
            self.closed = False
            self.left = updates
            FakeJtop.instances.append(self)

        def start(self):
            if start_error:
                raise JtopException(start_error)

        def ok(self):
            self.left -= 1
            return self.left >= 0

        @property
        def power(self):
            return power if power is not None else AGX_ORIN_POWER

        def close(self):
            self.closed = True

    module.jtop = FakeJtop
    module.JtopException = JtopException
    return module


@pytest.fixture
def socket_file(tmp_path):
    path = tmp_path / "jtop.sock"
    path.touch()
    return path


def test_rails_and_total_follow_elma_rules(monkeypatch, socket_file):
    module = fake_jtop_module()
    monkeypatch.setitem(sys.modules, "jtop", module)
    meter = JtopMeter(interval_ms=250, socket_path=socket_file)
    meter.start()
    assert module.jtop.instances[-1].interval == 0.25 and meter.effective_interval_s == 0.25
    sample = meter.read()
    assert sample.rail_power_mw == {"VDD_GPU_SOC": 2294.0, "VDD_CPU_CV": 382.0, "VIN_SYS_5V0": 4025.0, "VDDQ_VDD2_1V8AO": 300.0}
    assert sample.total_power_mw == 2294.0 + 382.0 + 4025.0  # not jtop's 7001
    meter.stop()
    assert module.jtop.instances[-1].closed


def test_jtop_stopping_is_a_read_error(monkeypatch, socket_file):
    monkeypatch.setitem(sys.modules, "jtop", fake_jtop_module(updates=1))
    meter = JtopMeter(socket_path=socket_file)
    meter.start()
    meter.read()
    with pytest.raises(PowerReadError, match="stopped sending"):
        meter.read()


def test_no_rails_is_a_read_error(monkeypatch, socket_file):
    monkeypatch.setitem(sys.modules, "jtop", fake_jtop_module(power={"rail": {}, "tot": {}}))
    meter = JtopMeter(socket_path=socket_file)
    meter.start()
    with pytest.raises(PowerReadError, match="no power rail"):
        meter.read()


def test_not_installed(monkeypatch, socket_file):
    monkeypatch.setitem(sys.modules, "jtop", None)  # makes `import jtop` raise ImportError
    with pytest.raises(PowerMeterUnavailable, match="jetson-stats .* not installed.*sudo pip3 install 'jetson-stats<5'"):
        JtopMeter(socket_path=socket_file).start()


def test_socket_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jtop", fake_jtop_module())
    with pytest.raises(PowerMeterUnavailable, match="jtop.sock not found.*systemctl restart jtop.service"):
        JtopMeter(socket_path=tmp_path / "jtop.sock").start()


def test_service_refuses(monkeypatch, socket_file):
    monkeypatch.setitem(sys.modules, "jtop", fake_jtop_module(start_error="The jtop.service is not active. Please run:\nsudo ..."))
    with pytest.raises(PowerMeterUnavailable, match="jtop refused to start: The jtop.service is not active"):
        JtopMeter(socket_path=socket_file).start()


def test_real_jetson_stats_without_service(tmp_path):
    pytest.importorskip("jtop", reason="jetson-stats not installed: it manages a systemd service, so it is installed on "
                                       "the Jetson host (sudo pip3 install 'jetson-stats<5'), not in dev")
    socket = tmp_path / "jtop.sock"
    socket.touch()  # a stale socket file with no service behind it
    with pytest.raises(PowerMeterUnavailable):
        JtopMeter(socket_path=socket).start()
