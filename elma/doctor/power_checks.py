"""Checks of the power sources ``elma.power`` can read, each with one sample read through the real meter class.

tegrastats on PATH, INA3221 rails in sysfs, the jtop socket and ``jtop.service``, and a Keysight supply when a
VISA resource is given. A source that is absent is MISSING; one that is there but gives no sample is WRONG.
"""

import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

from elma.doctor.report import MISSING, OK, WRONG, Check

TEGRASTATS_FIX = ("tegrastats ships with JetPack (/usr/bin/tegrastats); in the container mount it: "
                  "-v /usr/bin/tegrastats:/usr/bin/tegrastats:ro")
INA_FIX = ("INA3221 rails appear under /sys/bus/i2c/drivers/ina3221x (JetPack 4) or ina3221/*/hwmon (JetPack 5+) on "
           "boards that have them; reading may need root (sudo), and a container needs -v /sys:/sys:ro")
JTOP_FIX = ("sudo pip3 install 'jetson-stats<5' && sudo systemctl restart jtop.service (then log out and in); "
            "in the container: -v /run/jtop.sock:/run/jtop.sock and pip3 install 'jetson-stats<5'")


def _describe(sample) -> dict:
    return {"rail_power_mw": {k: round(v, 1) for k, v in sample.rail_power_mw.items()},
            "total_power_mw": None if sample.total_power_mw is None else round(sample.total_power_mw, 1)}


def _summary(sample) -> str:
    rails = ", ".join(f"{name} {mw:.0f} mW" for name, mw in list(sample.rail_power_mw.items())[:4])
    more = "" if len(sample.rail_power_mw) <= 4 else f", +{len(sample.rail_power_mw) - 4} rails"
    total = "no board total" if sample.total_power_mw is None else f"total {sample.total_power_mw:.0f} mW"
    return f"{rails}{more}; {total}"


def _sample_check(name: str, meter, fix: str, found: str) -> Check:
    """Start ``meter``, read one sample, stop it; OK with the sample or WRONG with why not."""
    from elma.errors import PowerMeterError

    try:
        meter.start()
        try:
            sample = meter.read()
        finally:
            meter.stop()
    except PowerMeterError as err:
        return Check(name, WRONG, f"{found}, but no sample: {err}", fix)
    if sample is None:
        return Check(name, WRONG, f"{found}, but no sample", fix)
    return Check(name, OK, f"{found}: {_summary(sample)}", sample=_describe(sample))


def check_tegrastats(tegrastats_cmd: Sequence[str], interval_ms: int) -> Check:
    from elma.power.tegrastats import TegrastatsMeter

    exe = shutil.which(tegrastats_cmd[0])
    if exe is None:
        return Check("power: tegrastats", MISSING, f"{tegrastats_cmd[0]!r} is not on PATH", TEGRASTATS_FIX)
    meter = TegrastatsMeter(tegrastats_cmd, interval_ms)
    return _sample_check("power: tegrastats", meter, "run it by hand (`tegrastats --interval 100`); it may need sudo: "
                         "--tegrastats-cmd 'sudo tegrastats'", f"{exe}")


def check_ina3221(sysfs_root: Path) -> Check:
    from elma.power.ina3221 import JP4_DRIVER_DIR, JP5_DRIVER_DIR, Ina3221Sysfs, discover_rails

    rails = discover_rails(sysfs_root)
    if not rails:
        return Check("power: ina3221", MISSING, f"no rails under {sysfs_root / JP4_DRIVER_DIR} or "
                     f"{sysfs_root / JP5_DRIVER_DIR}/*/hwmon", INA_FIX)
    return _sample_check("power: ina3221", Ina3221Sysfs(sysfs_root), INA_FIX,
                         f"{len(rails)} rails ({', '.join(r.rail for r in rails)})")


def service_state(systemctl_cmd: Sequence[str], unit: str = "jtop.service", timeout_s: float = 2.0) -> Optional[str]:
    """``systemctl is-active UNIT`` ("active", "inactive", "failed", ...), or None where systemctl cannot run."""
    try:
        proc = subprocess.run(list(systemctl_cmd) + ["is-active", unit], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.decode("ascii", "replace").strip() or None


def check_jtop(socket_path: Path, systemctl_cmd: Sequence[str], interval_ms: int) -> Check:
    from elma.power.jtop_meter import JtopMeter

    state = service_state(systemctl_cmd)
    service = f"jtop.service {state}" if state else "jtop.service state unknown (no systemctl)"
    if not Path(socket_path).exists():
        return Check("power: jtop", MISSING, f"no socket {socket_path}; {service}", JTOP_FIX)
    return _sample_check("power: jtop", JtopMeter(interval_ms, Path(socket_path)), JTOP_FIX,
                         f"socket {socket_path}, {service}")


def check_keysight(resource: str, visa_library: str, timeout_ms: int) -> Check:
    from elma.power.keysight import KeysightScpiMeter
    from elma.power.sources import parse_keysight_spec

    address, channels = parse_keysight_spec(resource)
    meter = KeysightScpiMeter(address, channels, visa_library, timeout_ms)
    return _sample_check("power: keysight", meter, "pip install 'elma[power]'; check the address (e.g. "
                         "TCPIP0::<ip>::5025::SOCKET), that the supply is on and its LAN/USB interface enabled",
                         f"{address} channels {','.join(map(str, channels))}")


def check_power(sysfs_root: Path, tegrastats_cmd: Sequence[str], jtop_socket: Path, systemctl_cmd: Sequence[str],
                keysight: Optional[str], visa_library: str, interval_ms: int, visa_timeout_ms: int) -> List[Check]:
    checks = [check_tegrastats(tegrastats_cmd, interval_ms), check_ina3221(Path(sysfs_root)),
              check_jtop(Path(jtop_socket), systemctl_cmd, interval_ms)]
    if keysight:
        checks.append(check_keysight(keysight, visa_library, visa_timeout_ms))
    return checks
