"""``--source`` specifications and the one config dataclass of ``elma.power``.

SOURCE is one of::

    tegrastats                         run tegrastats (PowerConfig.tegrastats_cmd) at interval_ms
    tegrastats-log:FILE                a tegrastats log recorded at interval_ms
    jtop                               jetson-stats, when jtop.service runs
    ina3221[:SYSFS_ROOT]               INA3221 rails under SYSFS_ROOT (default PowerConfig.sysfs_root)
    keysight:VISA_RESOURCE[@CH[,CH]]   Keysight E36300-family supply, channels default 1
    replay:FILE.csv                    a trace recorded with --csv
    null                               no samples (every energy stays empty)
    auto                               the first of ina3221, jtop, tegrastats found on this machine
"""

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

from elma.errors import PowerMeterUnavailable
from elma.power.base import NullMeter, PowerMeter

logger = logging.getLogger(__name__)

SOURCE_FORMS = ("tegrastats", "tegrastats-log:FILE", "jtop", "ina3221[:SYSFS_ROOT]", "keysight:VISA_RESOURCE[@CH[,CH]]",
                "replay:FILE.csv", "null", "auto")


@dataclass(frozen=True)
class PowerConfig:
    """How to measure power. CLI flags map 1:1 onto these fields."""

    source: str = "auto"  # a SOURCE_FORMS specification
    interval_ms: int = 100  # sampling period, ms: tegrastats --interval, jtop's interval, sysfs/SCPI poll period
    tegrastats_cmd: Tuple[str, ...] = ("tegrastats",)  # how to run tegrastats, e.g. ("sudo", "tegrastats")
    sysfs_root: str = "/sys"  # sysfs mount for ina3221 without an explicit root
    jtop_socket: str = "/run/jtop.sock"  # jtop.service's socket
    visa_library: str = "@py"  # PyVISA backend: "@py" (pyvisa-py), "" (installed VISA), "file.yaml@sim"
    visa_timeout_ms: int = 2000  # SCPI query timeout, ms; longer is a failed read (a gap)
    retry_s: float = 1.0  # wait between attempts to reopen a failed source, s
    max_samples: int = 1_000_000  # sample buffer bound (about 28 h at 100 ms)
    realtime_replay: bool = False  # replay: yield samples at their recorded pace, re-stamped from now

    def __post_init__(self) -> None:
        if self.interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive (got {self.interval_ms})")
        if self.visa_timeout_ms <= 0:
            raise ValueError(f"visa_timeout_ms must be positive (got {self.visa_timeout_ms})")
        if self.retry_s < 0:
            raise ValueError(f"retry_s must be >= 0 (got {self.retry_s})")


def parse_keysight_spec(spec: str) -> Tuple[str, Tuple[int, ...]]:
    """``VISA_RESOURCE[@CH[,CH]]`` -> (resource, channels). VISA resource strings never contain ``@``."""
    resource, at, channels = spec.rpartition("@")
    if not at:
        return spec, (1,)
    try:
        parsed = tuple(int(ch) for ch in channels.split(","))
    except ValueError as err:
        raise ValueError(f"keysight channels must be numbers like @1 or @1,2 (got @{channels})") from err
    return resource, parsed


def open_meter(config: PowerConfig) -> PowerMeter:
    """The meter a ``config.source`` names (not started).

    Raises:
        ValueError: an unknown or incomplete source specification.
        PowerMeterUnavailable: ``auto`` found no source on this machine.
    """
    kind, colon, arg = config.source.partition(":")
    if kind == "tegrastats" and not colon:
        from elma.power.tegrastats import TegrastatsMeter
        return TegrastatsMeter(config.tegrastats_cmd, config.interval_ms)
    if kind == "tegrastats-log" and arg:
        from elma.power.tegrastats import TegrastatsLogMeter
        return TegrastatsLogMeter(Path(arg), config.interval_ms)
    if kind == "jtop" and not colon:
        from elma.power.jtop_meter import JtopMeter
        return JtopMeter(config.interval_ms, Path(config.jtop_socket))
    if kind == "ina3221":
        from elma.power.ina3221 import Ina3221Sysfs
        return Ina3221Sysfs(Path(arg or config.sysfs_root))
    if kind == "keysight" and arg:
        from elma.power.keysight import KeysightScpiMeter
        resource, channels = parse_keysight_spec(arg)
        return KeysightScpiMeter(resource, channels, config.visa_library, config.visa_timeout_ms)
    if kind == "replay" and arg:
        from elma.power.replay import ReplayMeter
        return ReplayMeter(Path(arg), realtime=config.realtime_replay)
    if kind == "null" and not colon:
        return NullMeter()
    if kind == "auto" and not colon:
        return detect_meter(config)
    raise ValueError(f"unknown power source {config.source!r}; use one of: {', '.join(SOURCE_FORMS)}")


def detect_meter(config: PowerConfig) -> PowerMeter:
    """The first power source present here: INA3221 sysfs, then jtop, then tegrastats.

    Raises:
        PowerMeterUnavailable: none is present; the message lists where it looked.
    """
    from elma.power.ina3221 import JP4_DRIVER_DIR, JP5_DRIVER_DIR, Ina3221Sysfs, discover_rails
    from elma.power.jtop_meter import JtopMeter
    from elma.power.tegrastats import TegrastatsMeter

    root = Path(config.sysfs_root)
    looked: List[str] = []
    if discover_rails(root):
        return Ina3221Sysfs(root)
    looked.append(f"INA3221 rails under {root / JP4_DRIVER_DIR} and {root / JP5_DRIVER_DIR}")
    if Path(config.jtop_socket).exists():
        return JtopMeter(config.interval_ms, Path(config.jtop_socket))
    looked.append(f"the jtop service socket {config.jtop_socket}")
    if shutil.which(config.tegrastats_cmd[0]) is not None:
        return TegrastatsMeter(config.tegrastats_cmd, config.interval_ms)
    looked.append(f"{config.tegrastats_cmd[0]!r} on PATH")
    raise PowerMeterUnavailable(
        "no power source found on this machine; looked for " + "; ".join(looked)
        + ". Off a Jetson, give --source keysight:VISA_RESOURCE (a bench supply) or replay:FILE.csv")
