"""Named, nestable measurement windows over a sampler or a recorded trace (zeus-style ``begin_window``/``end_window``).

    with PowerSampler(TegrastatsMeter()) as sampler:
        monitor = EnergyMonitor(sampler)
        monitor.begin_window("question-17")
        monitor.begin_window("question-17/layer-3")   # windows nest freely; keys are independent
        ...
        layer = monitor.end_window("question-17/layer-3", wait_s=0)  # provisional: may lack its last edge
        question = monitor.end_window("question-17")                 # waits for the sample after the end
    final = [monitor.measure(span) for span in monitor.spans]        # every window again, all samples in

A window's energy needs a sample at or after its end to interpolate the edge, so ``end_window`` waits
for one (``wait_s``). Per-layer windows are far shorter than most sampling periods: end them with
``wait_s=0`` and measure ``monitor.spans`` again once sampling has stopped.
"""

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

from elma.power.integrate import Measurement, PowerTrace, measure
from elma.power.sampler import PowerSampler

logger = logging.getLogger(__name__)

DEFAULT_WAIT_S = 2.0


@dataclass(frozen=True)
class WindowSpan:
    """A closed window: its name and its edges on the meter's clock."""

    key: str
    start_s: float
    end_s: float


class EnergyMonitor:
    """Measurement windows over a live ``PowerSampler`` or a recorded ``PowerTrace``.

    Args:
        source: a started ``PowerSampler`` (windows default to ``sampler.clock()``), or a ``PowerTrace``
            (replayed/recorded samples: give ``start_s``/``end_s`` explicitly, on the trace's clock).
    """

    def __init__(self, source: Union[PowerSampler, PowerTrace]):
        self.source = source
        self._open: Dict[str, float] = {}
        self.spans: List[WindowSpan] = []  # closed windows, in the order they closed

    def _now(self) -> float:
        if isinstance(self.source, PowerSampler):
            return self.source.clock()
        raise ValueError("a recorded trace has no clock: pass start_s/end_s explicitly")

    @property
    def open_windows(self) -> List[str]:
        return list(self._open)

    def begin_window(self, key: str, start_s: Optional[float] = None) -> None:
        """Open a window named ``key`` now (or at ``start_s``).

        Raises:
            ValueError: a window with this key is already open.
        """
        if key in self._open:
            raise ValueError(f"measurement window {key!r} is already open; end it first or use another key")
        self._open[key] = self._now() if start_s is None else float(start_s)

    def end_window(self, key: str, end_s: Optional[float] = None, wait_s: Optional[float] = None) -> Measurement:
        """Close window ``key`` now (or at ``end_s``) and measure it.

        Args:
            key: a window opened with ``begin_window``.
            end_s: the end on the meter's clock; default now.
            wait_s: longest wait for a sample at or after the end, so the end edge can be interpolated
                (default 2 s; 0 returns at once with what has arrived: ``measured_s`` then falls short).

        Raises:
            ValueError: no open window has this key, or ``end_s`` precedes the window's start.
        """
        if key not in self._open:
            raise ValueError(f"no open measurement window {key!r} (open: {sorted(self._open) or 'none'})")
        start_s = self._open[key]
        end_s = self._now() if end_s is None else float(end_s)
        if end_s < start_s:
            raise ValueError(f"window {key!r} would end at {end_s} s, before its start at {start_s} s")
        del self._open[key]
        span = WindowSpan(key, start_s, end_s)
        self.spans.append(span)
        if isinstance(self.source, PowerSampler):
            self.source.wait_until(end_s, DEFAULT_WAIT_S if wait_s is None else wait_s)
        return self.measure(span)

    def measure(self, span: WindowSpan) -> Measurement:
        """Measure a window from the samples available now (again, after sampling stopped, for final figures)."""
        trace = self.source.window(span.start_s, span.end_s)
        return measure(trace, span.key, span.start_s, span.end_s)

    def measure_all(self, keep: Optional[Callable[[WindowSpan], bool]] = None) -> List[Measurement]:
        """Every closed window (or those ``keep`` accepts), measured from the samples available now."""
        return [self.measure(span) for span in self.spans if keep is None or keep(span)]
