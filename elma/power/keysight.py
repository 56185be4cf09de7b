"""Keysight E36311A (E36300 family) bench supply over SCPI with PyVISA: the board's input power, measured outside it.

Facts relied on (../shared/JETSON-NOTES.md section 3; verify on hardware where it says so):

- Resources: ``TCPIP0::<ip>::5025::SOCKET`` (raw SCPI socket, newline-terminated both ways),
  ``TCPIP0::<ip>::inst0::INSTR`` (VXI-11) and ``USB0::0x2A8D::<pid>::<serial>::0::INSTR``.
- ``*IDN?`` answers ``Keysight Technologies,E36311A,<serial>,<firmware>``.
- ``MEAS:VOLT? (@1,2)`` / ``MEAS:CURR? (@1,2)`` answer one NR3 number per listed channel, comma-separated.
  Power is computed here as P = V * I (``MEAS:POW?`` is unverified and not used).

``pyvisa`` is imported only when the meter starts. ``visa_library`` picks PyVISA's backend: ``"@py"``
(pyvisa-py, pure Python), ``""`` (an installed NI/Keysight VISA), or ``"instrument.yaml@sim"`` (pyvisa-sim).
"""

import logging
import re
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from elma.errors import PowerMeterUnavailable, PowerReadError
from elma.power.base import PowerMeter, PowerSample
from elma.power.rails import TotalRule

logger = logging.getLogger(__name__)

INSTALL_HINT = "install the power extra: pip install 'elma[power]' (pyvisa, pyvisa-py)"
# E36311A/E36312A/E36313A, and the EDU36311A whose guide documents the same socket service
MODEL_RE = re.compile(r"^(E|EDU)363\d\dA$")
MAKERS = ("KEYSIGHT", "AGILENT")
CHANNELS = (1, 2, 3)  # every E36300 model has three outputs


def channel_list(channels: Sequence[int]) -> str:
    """SCPI channel list, canonical spacing (pyvisa-sim matches queries exactly): ``(@1)``, ``(@1,2,3)``."""
    return "(@" + ",".join(str(ch) for ch in channels) + ")"


def parse_idn(idn: str) -> Tuple[str, str, str, str]:
    """``*IDN?`` answer as (maker, model, serial, firmware); missing fields are empty strings."""
    fields = [f.strip() for f in idn.strip().split(",")]
    fields += [""] * (4 - len(fields))
    return fields[0], fields[1], fields[2], ",".join(fields[3:]).strip(",")


class KeysightScpiMeter(PowerMeter):
    """Polls ``MEAS:VOLT?`` and ``MEAS:CURR?`` of the supply channels that feed the board.

    Rails are named ``CH<n>``; the board total is the sum of the listed channels (each is a separate
    output, so nothing is counted twice).

    Args:
        resource: VISA resource string (socket, VXI-11 or USB, see the module docstring).
        channels: supply outputs powering the board, 1..3.
        visa_library: PyVISA backend (``"@py"``, ``""``, ``"file.yaml@sim"``).
        timeout_ms: VISA I/O timeout per query, ms; a query that takes longer fails the read (a gap).
        clock: the clock samples are stamped with (``time.monotonic``).
    """

    name = "keysight"
    self_paced = False

    def __init__(self, resource: str, channels: Sequence[int] = (1,), visa_library: str = "@py", timeout_ms: int = 2000,
                 clock: Callable[[], float] = time.monotonic):
        channels = tuple(int(ch) for ch in channels)
        if not channels or any(ch not in CHANNELS for ch in channels) or len(set(channels)) != len(channels):
            raise ValueError(f"channels must be distinct outputs among {CHANNELS} (got {channels})")
        if not resource:
            raise ValueError("resource must be a VISA resource string, e.g. TCPIP0::192.168.1.5::5025::SOCKET (got '')")
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive (got {timeout_ms})")
        self.resource = resource
        self.channels = channels
        self.visa_library = visa_library
        self.timeout_ms = int(timeout_ms)
        self.clock = clock
        self.total_rule = TotalRule("sum of supply channels", tuple(f"CH{ch}" for ch in channels))
        self.identity: Optional[Tuple[str, str, str, str]] = None
        self._rm: Any = None
        self._inst: Any = None
        self._errors: Tuple[type, ...] = (OSError, ValueError)

    def describe(self) -> str:
        model = f"{self.identity[0]} {self.identity[1]} " if self.identity else ""
        return f"keysight {model}{self.resource} channels {','.join(map(str, self.channels))}"

    def start(self) -> None:
        """Open the resource and check it is an E36300-family supply.

        Raises:
            PowerMeterUnavailable: pyvisa missing, the resource cannot be opened, or ``*IDN?`` names another instrument.
        """
        self.stop()
        try:
            import pyvisa
        except ImportError as err:
            raise PowerMeterUnavailable(f"pyvisa is not installed; {INSTALL_HINT}") from err
        self._errors = (pyvisa.errors.Error, OSError, ValueError, EOFError)
        try:
            self._rm = pyvisa.ResourceManager(self.visa_library)
        except (OSError, ValueError, pyvisa.errors.Error) as err:
            raise PowerMeterUnavailable(f"PyVISA backend {self.visa_library!r} unavailable ({err}); {INSTALL_HINT}") from err
        try:
            self._inst = self._rm.open_resource(self.resource)
            # Keysight SCPI terminates commands and answers with a newline on every interface
            self._inst.read_termination = "\n"
            self._inst.write_termination = "\n"
            self._inst.timeout = self.timeout_ms
            idn = self._inst.query("*IDN?")
        except self._errors as err:
            self.stop()
            raise PowerMeterUnavailable(
                f"cannot talk to {self.resource} ({err}); check the address, that the supply is on and that "
                "its LAN/USB interface is enabled") from err
        maker, model, serial, firmware = parse_idn(idn)
        if not any(m in maker.upper() for m in MAKERS) or not MODEL_RE.match(model):
            self.stop()
            raise PowerMeterUnavailable(
                f"{self.resource} answered *IDN? with {idn.strip()!r}, not a Keysight E36300-family supply; "
                "give the resource of the supply that powers the board")
        self.identity = (maker, model, serial, firmware)
        logger.info("power: %s %s serial %s firmware %s at %s", maker, model, serial, firmware, self.resource)

    def _measure(self, quantity: str) -> List[float]:
        answer = self._inst.query(f"MEAS:{quantity}? {channel_list(self.channels)}")
        values = [float(v) for v in answer.strip().split(",")]
        if len(values) != len(self.channels):
            raise ValueError(f"MEAS:{quantity}? returned {len(values)} values for {len(self.channels)} channels: {answer!r}")
        return values

    def read(self) -> Optional[PowerSample]:
        if self._inst is None:
            raise PowerReadError(f"{self.resource} is not open (start() first)")
        before_s = self.clock()
        try:
            volts_v = self._measure("VOLT")
            amps_a = self._measure("CURR")
        except self._errors as err:
            raise PowerReadError(f"{self.resource}: {err}") from err
        stamp_s = (before_s + self.clock()) / 2.0  # V and I are queried one after the other: stamp the middle
        # P = V * I in W, * 1000 for mW, signs as measured (how the N25V output signs V and I is unverified)
        rail_power_mw = {f"CH{ch}": v * i * 1000.0 for ch, v, i in zip(self.channels, volts_v, amps_a)}
        return PowerSample(stamp_s, rail_power_mw, self.total_rule.total_mw(rail_power_mw))

    def stop(self) -> None:
        inst, self._inst = self._inst, None
        rm, self._rm = self._rm, None
        for handle in (inst, rm):
            if handle is not None:
                try:
                    handle.close()
                except Exception as err:  # closing a dead session must not hide the original failure
                    logger.debug("closing VISA handle failed: %s", err)
