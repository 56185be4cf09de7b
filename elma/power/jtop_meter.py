"""jetson-stats (``jtop``) as a power source, when its service runs.

jtop's client talks to ``jtop.service`` over ``/run/jtop.sock`` (../shared/JETSON-NOTES.md section 2).
``jetson.power['rail'][name]['power']`` is the rail's power in mW; jtop's own ``tot`` is *not* used,
because on AGX Orin it is the sum of all rails, which counts ``VDDQ_VDD2_1V8AO`` twice: the board total
follows ``elma.power.rails`` like every other source. The structure is the one of jetson-stats 4.x
(``jetson-stats<5``). ``jtop`` is imported only when this meter starts.
"""

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from elma.errors import PowerMeterUnavailable, PowerReadError
from elma.power.base import PowerMeter, PowerSample
from elma.power.rails import SKIPPED_RAILS, TotalRule, board_total_mw

logger = logging.getLogger(__name__)

JTOP_SOCKET = Path("/run/jtop.sock")
INSTALL_HINT = "install jetson-stats on the Jetson host: sudo pip3 install 'jetson-stats<5', then log out and in"


class JtopMeter(PowerMeter):
    """Reads the rails jtop publishes; each ``read()`` waits for jtop's next update.

    Args:
        interval_ms: the update period asked of jtop, ms. If another jtop client already runs, its period
            wins (``effective_interval_s`` tells which one is in force).
        socket_path: jtop's service socket (``/run/jtop.sock``; mounted into containers by hand).
        total_rule: overrides the per-device board-total rule.
        clock: the clock samples are stamped with (``time.monotonic``).
    """

    name = "jtop"
    self_paced = True

    def __init__(self, interval_ms: int = 100, socket_path: Path = JTOP_SOCKET, total_rule: Optional[TotalRule] = None,
                 clock: Callable[[], float] = time.monotonic):
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive (got {interval_ms})")
        self.interval_ms = int(interval_ms)
        self.socket_path = Path(socket_path)
        self.total_rule = total_rule
        self.clock = clock
        self.effective_interval_s: Optional[float] = None
        self._jetson: Any = None

    def describe(self) -> str:
        return f"jtop ({self.socket_path}, interval {self.interval_ms} ms)"

    def start(self) -> None:
        """Connect to the jtop service.

        Raises:
            PowerMeterUnavailable: jetson-stats is not installed, its socket is missing, or the service refuses.
        """
        self.stop()
        try:
            from jtop import JtopException, jtop
        except ImportError as err:
            raise PowerMeterUnavailable(f"jetson-stats (jtop) is not installed; {INSTALL_HINT}") from err
        if not self.socket_path.exists():
            raise PowerMeterUnavailable(
                f"jtop service socket {self.socket_path} not found: start it with 'sudo systemctl restart jtop.service' "
                "(in a container, mount it with -v /run/jtop.sock:/run/jtop.sock)")
        jetson = jtop(interval=self.interval_ms / 1000.0)
        try:
            jetson.start()
        except JtopException as err:
            raise PowerMeterUnavailable(f"jtop refused to start: {' '.join(str(err).split())}") from err
        except OSError as err:
            raise PowerMeterUnavailable(f"cannot reach the jtop service at {self.socket_path}: {err}") from err
        self._jetson = jetson
        self.effective_interval_s = getattr(jetson, "interval", None)

    def read(self) -> Optional[PowerSample]:
        if self._jetson is None:
            raise PowerReadError("jtop is not connected (start() first)")
        try:
            running = self._jetson.ok()
            power = self._jetson.power
        except Exception as err:  # jtop re-raises its client thread's error here, whatever its type
            raise PowerReadError(f"jtop failed: {err}") from err
        if not running:
            raise PowerReadError("jtop stopped sending updates")
        stamp_s = self.clock()
        rail_power_mw: Dict[str, float] = {}
        for name, rail in (power or {}).get("rail", {}).items():
            if name in SKIPPED_RAILS or not rail.get("online", True) or "power" not in rail:
                continue
            rail_power_mw[name] = float(rail["power"])
        if not rail_power_mw:
            raise PowerReadError("jtop reported no power rail")
        total_mw, _ = board_total_mw(rail_power_mw, self.total_rule)
        return PowerSample(stamp_s, rail_power_mw, total_mw)

    def stop(self) -> None:
        jetson, self._jetson = self._jetson, None
        if jetson is not None:
            try:
                jetson.close()
            except Exception as err:  # closing a dead client must not hide the original failure
                logger.debug("jtop close failed: %s", err)
