"""Power and energy on Jetson boards: power sources, a background sampler, measurement windows.

Sources (all behind ``PowerMeter``; heavy or optional modules, ``jtop`` and ``pyvisa``, are imported
only when their meter starts): ``TegrastatsMeter``, ``TegrastatsLogMeter``, ``Ina3221Sysfs``,
``JtopMeter``, ``KeysightScpiMeter``, ``ReplayMeter``, ``NullMeter``. ``PowerSampler`` reads one in a
background thread; ``EnergyMonitor.begin_window(key)`` / ``end_window(key) -> Measurement`` integrates
it. Board totals follow ``elma.power.rails``.
"""

from elma.errors import PowerMeterError, PowerMeterUnavailable, PowerReadError
from elma.power.base import NullMeter, PowerMeter, PowerSample
from elma.power.ina3221 import Ina3221Sysfs
from elma.power.integrate import Gap, Measurement, PowerTrace, integrate, measure
from elma.power.jtop_meter import JtopMeter
from elma.power.keysight import KeysightScpiMeter
from elma.power.monitor import EnergyMonitor, WindowSpan
from elma.power.rails import TotalRule, board_total_mw, total_rule_for
from elma.power.replay import ReplayMeter, read_trace_csv, write_trace_csv
from elma.power.sampler import PowerSampler
from elma.power.sources import PowerConfig, detect_meter, open_meter
from elma.power.tegrastats import TegrastatsLogMeter, TegrastatsMeter, parse_tegrastats_line

__all__ = [
    "EnergyMonitor", "Gap", "Ina3221Sysfs", "JtopMeter", "KeysightScpiMeter", "Measurement", "NullMeter", "PowerConfig",
    "PowerMeter", "PowerMeterError", "PowerMeterUnavailable", "PowerReadError", "PowerSample", "PowerSampler", "PowerTrace",
    "ReplayMeter", "TegrastatsLogMeter", "TegrastatsMeter", "TotalRule", "WindowSpan", "board_total_mw", "detect_meter",
    "integrate", "measure", "open_meter", "parse_tegrastats_line", "read_trace_csv", "total_rule_for", "write_trace_csv",
]
