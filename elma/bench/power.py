"""The power hook of ``elma-bench``: a sampler around the timed rounds and one energy window per round.

``elma.power`` is imported only when a source is given. A round interleaves every configuration, so its
window's energy is that of all of them together (``energy_per_question_mj`` divides by the questions of
the round times the configurations); for one configuration's energy use ``elma-energy``.
"""

import contextlib
import time
from typing import Callable, List, Optional

from elma.bench.results import EnergyStats


@contextlib.contextmanager
def power_sampler(source: Optional[str], interval_ms: int, meter=None, sampler=None):
    """A started ``PowerSampler``: the caller's ``sampler`` (not stopped here), else one over ``meter`` or the
    ``source`` spec (None when neither is given)."""
    if sampler is not None:
        yield sampler
        return
    if meter is None and source is None:
        yield None
        return
    from elma.power.sampler import PowerSampler

    if meter is None:
        from elma.power.sources import PowerConfig, open_meter

        meter = open_meter(PowerConfig(source=source, interval_ms=interval_ms))
    sampler = PowerSampler(meter, interval_s=interval_ms / 1e3).start()
    try:
        yield sampler
    finally:
        sampler.stop()


class RoundWindows:
    """One ``EnergyMonitor`` window per round (``on_round`` of ``run_interleaved``); a no-op without a sampler."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.windows: List[object] = []
        self._monitor = None
        if sampler is not None:
            from elma.power.monitor import EnergyMonitor

            self._monitor = EnergyMonitor(sampler)

    @property
    def clock(self) -> Callable[[], float]:
        return self.sampler.clock if self.sampler is not None else time.monotonic

    def __call__(self, round_index: int, event: str) -> None:
        if self._monitor is None:
            return
        key = f"pass-{round_index + 1}"
        if event == "begin":
            self._monitor.begin_window(key)
        else:
            self.windows.append(self._monitor.end_window(key))

    def stats(self, interval_ms: int, answers_per_round: int) -> Optional[EnergyStats]:
        """Energy of each round per answered question (None without a sampler)."""
        if self.sampler is None:
            return None
        return EnergyStats(self.sampler.meter.describe(), interval_ms,
                           [None if m.energy_mj is None else m.energy_mj / answers_per_round for m in self.windows],
                           [m.mean_power_mw for m in self.windows], self.windows)
