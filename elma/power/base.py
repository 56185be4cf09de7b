"""The one small interface every power source implements, and the sample it yields.

STYLE.md names the backend ABC ``PowerMeter`` with ``read_cumulative_mj()``. None of the Jetson sources
(tegrastats, INA3221 sysfs, jtop, a bench supply's V and I) keeps an energy counter, so a meter here
yields *instantaneous* per-rail power samples and the energy is integrated explicitly on top of it
(``elma.power.integrate``); ``PowerSampler.read_cumulative_mj()`` is where the cumulative figure lives.
"""

import abc
import logging
from dataclasses import dataclass
from typing import Dict, Optional

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PowerSample:
    """One reading of every rail a source reports.

    ``timestamp_s`` is on the meter's clock: ``time.monotonic()`` when the reading arrived for live
    meters, the recorded clock for a log file or a replayed CSV.
    """

    timestamp_s: float
    rail_power_mw: Dict[str, float]  # rail name -> instantaneous power, mW
    total_power_mw: Optional[float]  # board total (elma.power.rails); None where the rails do not determine it


class PowerMeter(abc.ABC):
    """A source of power samples: ``start()``, then ``read()`` until ``stop()``.

    ``read()`` returns the next sample, ``None`` once a finite source (a log, a CSV) is exhausted, and
    raises ``PowerReadError`` when a live source fails mid-run (the sampler records a gap, calls
    ``stop()`` and later ``start()`` again). ``start()`` raises ``PowerMeterUnavailable`` with what to
    do next. ``stop()`` is idempotent and never raises.
    """

    #: short name used in reports and CSV headers
    name: str = "meter"
    #: True when ``read()`` itself waits for the source's next sample (tegrastats, jtop, replay);
    #: False when the sampler paces the reads (sysfs, SCPI).
    self_paced: bool = False

    def start(self) -> None:
        """Open the source (spawn, connect, discover). Default: nothing to open."""
        return None

    def stop(self) -> None:
        """Release the source. Default: nothing to release."""
        return None

    @abc.abstractmethod
    def read(self) -> Optional[PowerSample]:
        """The next sample; ``None`` when a finite source has no more."""

    def describe(self) -> str:
        """One line for reports: which source, with which settings."""
        return self.name

    def __enter__(self) -> "PowerMeter":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class NullMeter(PowerMeter):
    """A meter with no samples, so code paths run anywhere; it never invents a figure (energies stay ``None``)."""

    name = "null"
    self_paced = True

    def read(self) -> Optional[PowerSample]:
        return None
