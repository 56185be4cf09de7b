"""Recorded samples as CSV, and a meter that replays them, so a measurement can be re-analysed anywhere.

Format (``elma power trace v1``)::

    #elma-power-trace,1
    #source,tegrastats (tegrastats --interval 100)
    #gap,12.5,13.125,tegrastats exited with status 1
    timestamp_s,total_power_mw,VDD_IN_power_mw,VDD_CPU_GPU_CV_power_mw,VDD_SOC_power_mw
    10.0,5299.0,5299.0,773.0,1424.0

Comment lines hold the metadata and the gaps (``#gap,START_S,END_S,REASON``, END_S empty for a gap still
open at the end); an empty cell is a rail (or total) with no value in that sample. Floats are written
with ``repr``, so a round trip is exact.
"""

import csv
import io
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

from elma.errors import DataError, PowerMeterUnavailable, PowerReadError
from elma.fsutil import atomic_write
from elma.power.base import PowerMeter, PowerSample
from elma.power.integrate import Gap, PowerTrace

logger = logging.getLogger(__name__)

MAGIC = "elma-power-trace"
VERSION = "1"
RAIL_SUFFIX = "_power_mw"


def _csv_line(fields: List[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


def _cell(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))


def trace_to_csv(trace: PowerTrace) -> str:
    """The CSV text of a trace (see the module docstring)."""
    rails = trace.rails()
    parts = ["#" + _csv_line([MAGIC, VERSION]), "#" + _csv_line(["source", trace.source])]
    for gap in trace.gaps:
        parts.append("#" + _csv_line(["gap", _cell(gap.start_s), _cell(gap.end_s), gap.reason]))
    parts.append(_csv_line(["timestamp_s", "total_power_mw"] + [rail + RAIL_SUFFIX for rail in rails]))
    for sample in trace.samples:
        parts.append(_csv_line([_cell(sample.timestamp_s), _cell(sample.total_power_mw)]
                               + [_cell(sample.rail_power_mw.get(rail)) for rail in rails]))
    return "".join(parts)


def write_trace_csv(path: Path, trace: PowerTrace, overwrite: bool = True) -> None:
    """Write a trace as CSV, atomically (``overwrite=False``: refuse a file already there)."""
    text = trace_to_csv(trace)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite)


def _float(text: str, where: str) -> Optional[float]:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError as err:
        raise DataError(f"{where}: {text!r} is not a number") from err


def read_trace_csv(path: Path) -> PowerTrace:
    """Read a trace written by ``write_trace_csv``.

    Raises:
        DataError: not an elma power trace, a cell that is not a number, or timestamps out of order.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read power trace {path} ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise DataError(f"power trace {path} is not UTF-8 text") from err
    lines = text.splitlines()
    if not lines or next(csv.reader([lines[0][1:]]))[:1] != [MAGIC] or not lines[0].startswith("#"):
        raise DataError(f"{path} is not an elma power trace (its first line should be '#{MAGIC},{VERSION}')")
    source, gaps, body = "", [], []
    for number, line in enumerate(lines[1:], start=2):
        if line.startswith("#"):
            fields = next(csv.reader([line[1:]]))
            if fields[:1] == ["source"] and len(fields) >= 2:
                source = fields[1]
            elif fields[:1] == ["gap"] and len(fields) >= 4:
                start_s = _float(fields[1], f"{path}:{number}")
                if start_s is None:
                    raise DataError(f"{path}:{number}: a gap needs a start time")
                gaps.append(Gap(start_s, _float(fields[2], f"{path}:{number}"), fields[3]))
        elif line.strip():
            body.append((number, line))
    if not body:
        raise DataError(f"{path} has no header row")
    header = next(csv.reader([body[0][1]]))
    if header[:2] != ["timestamp_s", "total_power_mw"] or not all(h.endswith(RAIL_SUFFIX) for h in header[2:]):
        raise DataError(f"{path}:{body[0][0]}: header must be timestamp_s,total_power_mw,<rail>{RAIL_SUFFIX}... (got {header})")
    rails = [h[: -len(RAIL_SUFFIX)] for h in header[2:]]
    samples: List[PowerSample] = []
    for number, line in body[1:]:
        row = next(csv.reader([line]))
        where = f"{path}:{number}"
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} cells, the header has {len(header)}")
        stamp_s = _float(row[0], where)
        if stamp_s is None:
            raise DataError(f"{where}: empty timestamp_s")
        rail_power_mw: Dict[str, float] = {}
        for rail, cell in zip(rails, row[2:]):
            value = _float(cell, where)
            if value is not None:
                rail_power_mw[rail] = value
        samples.append(PowerSample(stamp_s, rail_power_mw, _float(row[1], where)))
    try:
        return PowerTrace(samples, gaps, source)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from err


class ReplayMeter(PowerMeter):
    """Replays a recorded CSV trace; a recorded gap replays as a failed read, hence as the same gap.

    Args:
        path: a CSV written by ``write_trace_csv``.
        realtime: False: yield every sample at once, timestamps as recorded. True: shift the timestamps so
            the first sample is "now" on ``clock`` and yield each one when its time comes (to replay a log
            against a live run).
        clock: the clock for ``realtime`` (``time.monotonic``).
    """

    name = "replay"
    self_paced = True

    def __init__(self, path: Path, realtime: bool = False, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.realtime = realtime
        self.clock = clock
        self.trace: Optional[PowerTrace] = None
        self._next = 0
        self._offset_s = 0.0
        self._gap_ends: Dict[float, Gap] = {}
        self._gap_reported: Set[float] = set()
        self._halt = threading.Event()  # set by stop(): a realtime wait ends at once

    def describe(self) -> str:
        recorded = f" of {self.trace.source}" if self.trace is not None and self.trace.source else ""
        return f"replay {self.path}{recorded}" + (" (realtime)" if self.realtime else "")

    def start(self) -> None:
        """Load the trace on the first call; later calls (after a replayed gap) resume where it stopped."""
        self._halt.clear()
        if self.trace is not None:
            return
        if not self.path.is_file():
            raise PowerMeterUnavailable(f"replay file {self.path} not found; record one with 'elma power sample --csv'")
        self.trace = read_trace_csv(self.path)
        self._gap_ends = {g.end_s: g for g in self.trace.gaps if g.end_s is not None}
        if self.realtime and self.trace.samples:
            self._offset_s = self.clock() - self.trace.samples[0].timestamp_s

    def read(self) -> Optional[PowerSample]:
        if self.trace is None:
            raise PowerReadError(f"{self.path} is not loaded (start() first)")
        if self._next >= len(self.trace.samples):
            return None
        sample = self.trace.samples[self._next]
        gap = self._gap_ends.get(sample.timestamp_s)
        if gap is not None and self._next > 0 and sample.timestamp_s not in self._gap_reported:
            self._gap_reported.add(sample.timestamp_s)
            raise PowerReadError(gap.reason)
        self._next += 1
        if not self.realtime:
            return sample
        stamp_s = sample.timestamp_s + self._offset_s
        delay_s = stamp_s - self.clock()
        if delay_s > 0 and self._halt.wait(delay_s):
            return None  # stopped while waiting for the sample's time
        return PowerSample(stamp_s, sample.rail_power_mw, sample.total_power_mw)

    def stop(self) -> None:
        """Interrupt a realtime wait; the position is kept, so ``start()`` resumes."""
        self._halt.set()
