"""Energy of a time window from power samples: the trapezoid rule, edges interpolated, gaps left out.

Between two consecutive samples power is taken as the straight line joining them (which is what the
trapezoid rule integrates). A window's edges fall between samples: the line is evaluated there, so a
window is charged exactly the part of each segment it covers. A segment that overlaps a ``Gap`` (the
source failed between those samples) is not integrated at all: its energy is unknown, and an energy
figure appears only where samples were measured. Units: timestamps in s, power in mW, energy in mJ.
"""

import bisect
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from elma.power.base import PowerSample


@dataclass(frozen=True)
class Gap:
    """A stretch of time in which the source gave no samples because it failed (not merely between samples)."""

    start_s: float  # time of the last good sample before the failure (the sampler's start if there was none)
    end_s: Optional[float]  # time of the first good sample after it; None while the source is still down
    reason: str  # what failed, e.g. "tegrastats exited with status 1"

    def overlaps(self, start_s: float, end_s: float) -> bool:
        return self.start_s < end_s and (self.end_s is None or self.end_s > start_s)

    def clipped(self, start_s: float, end_s: float) -> "Gap":
        gap_end_s = end_s if self.end_s is None else min(self.end_s, end_s)
        return Gap(max(self.start_s, start_s), gap_end_s, self.reason)


@dataclass
class PowerTrace:
    """Samples in time order, the gaps between them, and where they came from. ``timestamp_s`` never decreases."""

    samples: List[PowerSample]
    gaps: List[Gap] = field(default_factory=list)
    source: str = ""  # PowerMeter.describe() of the source

    def __post_init__(self) -> None:
        self._times = [s.timestamp_s for s in self.samples]
        for i in range(1, len(self._times)):
            if self._times[i] < self._times[i - 1]:
                raise ValueError(f"samples must be in time order (sample {i} at {self._times[i]} s follows {self._times[i - 1]} s)")

    def rails(self) -> List[str]:
        """Every rail name in the trace, in order of first appearance."""
        names: Dict[str, None] = {}
        for sample in self.samples:
            for name in sample.rail_power_mw:
                names.setdefault(name, None)
        return list(names)

    def window(self, start_s: float, end_s: float) -> "PowerTrace":
        """The samples a window needs (those inside plus one on each side) and the gaps overlapping it."""
        lo = max(0, bisect.bisect_right(self._times, start_s) - 1)
        hi = min(len(self._times), bisect.bisect_left(self._times, end_s) + 1)
        gaps = [g for g in self.gaps if g.overlaps(start_s, end_s)]
        return PowerTrace(self.samples[lo:hi], gaps, self.source)

    def latest_s(self) -> Optional[float]:
        return self._times[-1] if self._times else None


@dataclass(frozen=True)
class Integral:
    """The integral of one power series over one window."""

    energy_mj: float  # over the measured part only
    measured_s: float  # how much of the window lies between two usable samples
    peak_power_mw: Optional[float]  # highest value of the piecewise-linear power inside the window; None if nothing measured


def integrate(timestamps_s: Sequence[float], power_mw: Sequence[float], start_s: float, end_s: float,
              gaps: Sequence[Gap] = ()) -> Integral:
    """Trapezoid integral of power over ``[start_s, end_s]``, interpolated at the edges, skipping gaps.

    Args:
        timestamps_s: sample times, non-decreasing, s.
        power_mw: power at those times, mW; NaN where this series has no value (that segment is skipped).
        start_s, end_s: the window, s (``end_s >= start_s``).
        gaps: source failures; a segment overlapping one is not integrated.

    Returns:
        ``Integral``: energy (mJ) over the measured part, the measured duration (s) and the peak (mW).
    """
    if end_s < start_s:
        raise ValueError(f"window ends before it starts (start_s={start_s}, end_s={end_s})")
    t = np.asarray(timestamps_s, dtype=np.float64)  # (N,)
    p = np.asarray(power_mw, dtype=np.float64)  # (N,)
    if t.shape != p.shape:
        raise ValueError(f"timestamps and powers differ in length ({t.size} vs {p.size})")
    inside = (t >= start_s) & (t <= end_s) & np.isfinite(p)
    peak = float(p[inside].max()) if inside.any() else None
    if t.size < 2:
        return Integral(0.0, 0.0, peak)
    t0, t1, p0, p1 = t[:-1], t[1:], p[:-1], p[1:]  # (N-1,) segments
    lo = np.maximum(t0, start_s)
    hi = np.minimum(t1, end_s)
    width = hi - lo
    ok = (width > 0) & np.isfinite(p0) & np.isfinite(p1)
    for gap in gaps:
        gap_end_s = math.inf if gap.end_s is None else gap.end_s
        ok &= ~((t0 < gap_end_s) & (t1 > gap.start_s))
    if not ok.any():
        return Integral(0.0, 0.0, peak)
    t0, t1, p0, p1, lo, hi, width = (a[ok] for a in (t0, t1, p0, p1, lo, hi, width))
    slope = (p1 - p0) / (t1 - t0)  # mW/s; t1 > t0 wherever width > 0
    p_lo = p0 + slope * (lo - t0)
    p_hi = p0 + slope * (hi - t0)
    energy_mj = float(np.sum((p_lo + p_hi) * 0.5 * width))
    edge_peak = float(max(p_lo.max(), p_hi.max()))
    return Integral(energy_mj, float(np.sum(width)), edge_peak if peak is None else max(peak, edge_peak))


@dataclass(frozen=True)
class Measurement:
    """What a measurement window measured. Energies cover only ``measured_s`` of the window's ``duration_s``."""

    key: str  # the window's name
    start_s: float  # window start on the meter's clock, s
    end_s: float  # window end, s
    duration_s: float  # end_s - start_s
    measured_s: float  # part of the window covered by samples of the board total (gaps and edges excluded)
    energy_mj: Optional[float]  # board-total energy over measured_s; None if nothing was measured or no total is known
    mean_power_mw: Optional[float]  # energy_mj / measured_s
    peak_power_mw: Optional[float]  # peak of the (piecewise-linear) board total inside the window
    sample_count: int  # samples with start_s <= timestamp_s <= end_s
    rail_energy_mj: Dict[str, float]  # per rail, over the time that rail was measured
    rail_mean_power_mw: Dict[str, float]
    rail_peak_power_mw: Dict[str, float]
    gaps: List[Gap]  # source failures overlapping the window, clipped to it

    @property
    def coverage(self) -> Optional[float]:
        """Measured fraction of the window (None for a zero-length window)."""
        return self.measured_s / self.duration_s if self.duration_s > 0 else None


def measure(trace: PowerTrace, key: str, start_s: float, end_s: float) -> Measurement:
    """Integrate the board total and every rail of ``trace`` over ``[start_s, end_s]``."""
    part = trace.window(start_s, end_s)
    times = [s.timestamp_s for s in part.samples]
    nan = float("nan")
    totals = [nan if s.total_power_mw is None else s.total_power_mw for s in part.samples]
    total = integrate(times, totals, start_s, end_s, part.gaps)
    measured = total.measured_s > 0
    rail_energy, rail_mean, rail_peak = {}, {}, {}
    for rail in part.rails():
        values = [s.rail_power_mw.get(rail, nan) for s in part.samples]
        integral = integrate(times, values, start_s, end_s, part.gaps)
        if integral.measured_s > 0:
            rail_energy[rail] = integral.energy_mj
            rail_mean[rail] = integral.energy_mj / integral.measured_s
        if integral.peak_power_mw is not None:
            rail_peak[rail] = integral.peak_power_mw
    return Measurement(
        key=key, start_s=start_s, end_s=end_s, duration_s=end_s - start_s, measured_s=total.measured_s,
        energy_mj=total.energy_mj if measured else None,
        mean_power_mw=total.energy_mj / total.measured_s if measured else None,
        peak_power_mw=total.peak_power_mw,
        sample_count=sum(1 for t in times if start_s <= t <= end_s),
        rail_energy_mj=rail_energy, rail_mean_power_mw=rail_mean, rail_peak_power_mw=rail_peak,
        gaps=[g.clipped(start_s, end_s) for g in part.gaps],
    )
