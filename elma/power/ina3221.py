"""INA3221 power monitors read straight from sysfs, for boards where tegrastats is unwanted.

Two driver layouts (../shared/JETSON-NOTES.md, "INA3221 sysfs"):

- JetPack 4 (L4T <= 32), ``ina3221x`` IIO driver:
  ``bus/i2c/drivers/ina3221x/<bus-addr>/iio:deviceN/rail_name_<ch>`` and ``in_power<ch>_input`` (mW),
  ``in_voltage<ch>_input`` (mV), ``in_current<ch>_input`` (mA); channels from 0. The power file is read;
  where it is missing, P = V * I.
- JetPack 5+ (L4T >= 34), mainline ``ina3221`` hwmon driver:
  ``bus/i2c/drivers/ina3221/<bus-addr>/hwmon/hwmonN/in<ch>_label``, ``in<ch>_input`` (bus voltage, mV),
  ``curr<ch>_input`` (mA); channels from 1. There is no power file: P = V * I / 1000 mW. ``in7`` (the
  sum of shunt voltages) and channels labelled ``NC`` are skipped (https://kernel.org/doc/Documentation/hwmon/ina3221.rst).
"""

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from elma.errors import PowerMeterUnavailable, PowerReadError
from elma.power.base import PowerMeter, PowerSample
from elma.power.rails import SKIPPED_RAILS, TotalRule, board_total_mw

logger = logging.getLogger(__name__)

JP4_DRIVER_DIR = Path("bus/i2c/drivers/ina3221x")
JP5_DRIVER_DIR = Path("bus/i2c/drivers/ina3221")
_JP4_NAME_RE = re.compile(r"^rail_name_(\d+)$")
_JP5_LABEL_RE = re.compile(r"^in(\d+)_label$")
SUM_CHANNEL = 7  # hwmon in7: sum of the shunt voltages, not a rail


@dataclass(frozen=True)
class RailFiles:
    """Where one rail's readings live. Either ``power_file`` (mW) or ``voltage_file`` (mV) with ``current_file`` (mA)."""

    rail: str
    device: str  # the I2C device folder, "<bus>-<addr>" (e.g. "1-0040")
    power_file: Optional[Path]
    voltage_file: Optional[Path]
    current_file: Optional[Path]


def _read_text(path: Path) -> str:
    return path.read_text(encoding="ascii", errors="replace").strip()


def discover_rails(sysfs_root: Path) -> List[RailFiles]:
    """Every INA3221 rail under ``sysfs_root`` (normally ``/sys``), in both driver layouts.

    Returns:
        The rails in a stable order (driver, device, channel), ``NC`` and ``in7`` left out; empty if none.
    """
    root = Path(sysfs_root)
    rails: List[RailFiles] = []
    for device in sorted(root.glob(str(JP4_DRIVER_DIR / "*" / "iio:device*"))):
        for name_file in sorted(device.iterdir()):
            match = _JP4_NAME_RE.match(name_file.name)
            if not match:
                continue
            ch = match.group(1)
            label = _read_text(name_file)
            if not label or label in SKIPPED_RAILS:
                continue
            power = device / f"in_power{ch}_input"
            voltage = device / f"in_voltage{ch}_input"
            current = device / f"in_current{ch}_input"
            if power.exists():
                rails.append(RailFiles(label, device.parent.name, power, None, None))
            elif voltage.exists() and current.exists():
                rails.append(RailFiles(label, device.parent.name, None, voltage, current))
    for hwmon in sorted(root.glob(str(JP5_DRIVER_DIR / "*" / "hwmon" / "hwmon*"))):
        for label_file in sorted(hwmon.iterdir()):
            match = _JP5_LABEL_RE.match(label_file.name)
            if not match:
                continue
            ch = int(match.group(1))
            label = _read_text(label_file)
            if ch == SUM_CHANNEL or not label or label in SKIPPED_RAILS:
                continue
            voltage = hwmon / f"in{ch}_input"
            current = hwmon / f"curr{ch}_input"
            if voltage.exists() and current.exists():
                rails.append(RailFiles(label, hwmon.parent.parent.name, None, voltage, current))
    return _unique_names(rails)


def _unique_names(rails: List[RailFiles]) -> List[RailFiles]:
    # two monitors may label a channel alike; keep both, the later one named after its device folder
    seen = set()
    unique = []
    for rail in rails:
        name = rail.rail
        if name in seen:
            name = f"{name}@{rail.device}"
        seen.add(name)
        unique.append(RailFiles(name, rail.device, rail.power_file, rail.voltage_file, rail.current_file))
    return unique


class Ina3221Sysfs(PowerMeter):
    """Polls the INA3221 rail files under an injected sysfs root.

    Args:
        sysfs_root: the sysfs mount (``/sys`` on the board; a fixture tree in tests).
        total_rule: overrides the per-device board-total rule.
        clock: the clock samples are stamped with (``time.monotonic``).
    """

    name = "ina3221"
    self_paced = False

    def __init__(self, sysfs_root: Path = Path("/sys"), total_rule: Optional[TotalRule] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.sysfs_root = Path(sysfs_root)
        self.total_rule = total_rule
        self.clock = clock
        self.rails: List[RailFiles] = []

    def describe(self) -> str:
        return f"ina3221 sysfs under {self.sysfs_root} ({', '.join(r.rail for r in self.rails) or 'no rails'})"

    def start(self) -> None:
        """Find the rails and read them once. When reopened after a failure, the same rails must be back.

        Raises:
            PowerMeterUnavailable: no INA3221 rail under the root, its files cannot be read, or (on reopening)
                the set of rails changed.
        """
        rails = discover_rails(self.sysfs_root)
        known = [r.rail for r in self.rails]
        if known and [r.rail for r in rails] != known:
            # reopened after a failure: a rail that has not come back would silently change the total
            raise PowerMeterUnavailable(f"INA3221 rails changed from {known} to {[r.rail for r in rails]}")
        self.rails = rails
        if not self.rails:
            raise PowerMeterUnavailable(
                f"no INA3221 rails under {self.sysfs_root / JP4_DRIVER_DIR} (JetPack 4) or "
                f"{self.sysfs_root / JP5_DRIVER_DIR}/*/hwmon (JetPack 5+); on a Jetson check the sysfs root, "
                "elsewhere use --source keysight:RESOURCE or replay:FILE.csv")
        try:
            self.read()
        except PowerReadError as err:
            raise PowerMeterUnavailable(f"INA3221 rails found but unreadable: {err}; reading them may need root") from err

    def read(self) -> Optional[PowerSample]:
        rail_power_mw = {}
        before_s = self.clock()
        try:
            for rail in self.rails:
                if rail.power_file is not None:
                    rail_power_mw[rail.rail] = float(_read_text(rail.power_file))
                else:
                    voltage_mv = float(_read_text(rail.voltage_file))
                    current_ma = float(_read_text(rail.current_file))
                    rail_power_mw[rail.rail] = voltage_mv * current_ma / 1000.0
        except (OSError, ValueError) as err:
            raise PowerReadError(f"reading INA3221 rail {rail.rail}: {err}") from err
        stamp_s = (before_s + self.clock()) / 2.0  # the files are read one after another: stamp the middle
        total_mw, _ = board_total_mw(rail_power_mw, self.total_rule)
        return PowerSample(stamp_s, rail_power_mw, total_mw)
