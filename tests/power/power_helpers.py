"""Helpers of the power tests: real tegrastats lines, sysfs trees of both INA3221 drivers, a fake tegrastats.

Nothing here touches hardware or the network beyond 127.0.0.1.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

FIXTURES = Path(__file__).parent / "fixtures"
TEGRASTATS_LOGS = FIXTURES / "tegrastats"
E36311A_YAML = FIXTURES / "e36311a.yaml"


def tegrastats_lines(name: str) -> List[str]:
    return (TEGRASTATS_LOGS / f"{name}.log").read_text().splitlines()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def make_jp4_sysfs(root: Path, devices: Dict[str, List[Tuple[str, int]]], power_files: bool = True) -> Path:
    """JetPack 4 ``ina3221x`` layout: devices {"0-0041/iio:device1": [(rail, mW), ...]}, channels from 0.

    Voltage 5000 mV is written beside each rail with the current that gives its power (mA = mW / 5).
    """
    for device, rails in devices.items():
        base = root / "bus/i2c/drivers/ina3221x" / device
        for ch, (rail, power_mw) in enumerate(rails):
            _write(base / f"rail_name_{ch}", rail)
            if power_files:
                _write(base / f"in_power{ch}_input", str(power_mw))
            _write(base / f"in_voltage{ch}_input", "5000")
            _write(base / f"in_current{ch}_input", str(power_mw // 5))
    return root


def make_jp5_sysfs(root: Path, devices: Dict[str, List[Tuple[str, int, int]]], sum_channel: bool = True) -> Path:
    """JetPack 5+ ``ina3221`` hwmon layout: devices {"1-0040/hwmon/hwmon3": [(label, mV, mA), ...]}, channels 1..3.

    Like the real driver, in4..in6 (shunt voltages) have no label, and in7 (sum of shunts) carries a label
    and must be skipped; curr4 is the summed current.
    """
    for device, rails in devices.items():
        base = root / "bus/i2c/drivers/ina3221" / device
        _write(base / "name", "ina3221")
        for ch, (label, voltage_mv, current_ma) in enumerate(rails, start=1):
            _write(base / f"in{ch}_label", label)
            _write(base / f"in{ch}_input", str(voltage_mv))
            _write(base / f"curr{ch}_input", str(current_ma))
            _write(base / f"in{ch + 3}_input", "40")  # shunt voltage, mV: never read as a rail
        if sum_channel:
            _write(base / "in7_label", "sum of shunt voltages")
            _write(base / "in7_input", "120")
            _write(base / "curr7_input", "999")  # not a real file on the board: proves in7 is skipped by number
            _write(base / "curr4_input", "999")
    return root


FAKE_TEGRASTATS = '''
import os, sys, time
args = sys.argv[1:]
if args[:1] != ["--interval"] or len(args) != 2:
    sys.stderr.write("fake tegrastats: expected --interval MS, got %r\\n" % (args,))
    sys.exit(64)
interval_s = int(args[1]) / 1000.0
lines = open({lines!r}).read().splitlines()
runs_file = {runs!r}
runs = int(open(runs_file).read()) if os.path.exists(runs_file) else 0
open(runs_file, "w").write(str(runs + 1))
die_after = {die_after!r} if runs == 0 else None
i = 0
while True:
    sys.stdout.write(lines[i % len(lines)] + "\\n")
    sys.stdout.flush()
    i += 1
    if die_after is not None and i >= die_after:
        sys.stderr.write("fake tegrastats: simulated crash\\n")
        sys.exit(3)
    time.sleep(interval_s)
'''


def make_fake_tegrastats(tmp_path: Path, lines: List[str], die_after: Optional[int] = None) -> List[str]:
    """Write a fake ``tegrastats`` that prints ``lines`` in a loop every ``--interval`` ms; returns its command.

    With ``die_after``, its first run exits with status 3 after that many lines (later runs keep going).
    ``tmp_path / "runs"`` counts how often it was started.
    """
    lines_file = tmp_path / "tegrastats-lines.txt"
    lines_file.write_text("\n".join(lines) + "\n")
    script = tmp_path / "tegrastats"
    script.write_text(textwrap.dedent(FAKE_TEGRASTATS.format(lines=str(lines_file), runs=str(tmp_path / "runs"), die_after=die_after)))
    return [sys.executable, str(script)]
