"""tegrastats: parse its lines, run it, or read its log file.

Line formats (../shared/JETSON-NOTES.md section 1, real lines in tests/power/fixtures/tegrastats/):

- JetPack 4 and older: ``RAIL cur/avg`` in mW with no unit (``VDD_IN 3140/3208``).
- JetPack 5/6: ``RAIL curmW/avgmW`` (``VDD_IN 2763mW/2846mW``); newer builds prefix ``MM-DD-YYYY HH:MM:SS``.
- JetPack 7: three values ``5139mW/5139mW/5139mW`` (the third one's meaning is unverified; it is kept
  nowhere). Fields are separated by runs of spaces on some builds (datadog ``r36Sample``).

Only the first value (instantaneous) is integrated; the second is tegrastats' running average since it
started. A line with no power rail, or with a rail value that looks like power but does not parse, is
malformed: it is counted and skipped, never fatal.
"""

import logging
import os
import re
import select
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from elma.errors import PowerMeterUnavailable, PowerReadError
from elma.power.base import PowerMeter, PowerSample
from elma.power.rails import SKIPPED_RAILS, TotalRule, board_total_mw

logger = logging.getLogger(__name__)

# jetson_stats strips the same prefix with r'\d+\-\d+\-\d+ \d+\:\d+\:\d+ ' (jtop/core/tegra_parse.py)
DATE_PREFIX_RE = re.compile(r"^\s*(\d{1,2})-(\d{1,2})-(\d{4}) (\d{1,2}):(\d{2}):(\d{2})\s+")
_VALUE = r"([0-9]+(?:\.[0-9]+)?)(mW|W)?"
RAIL_VALUE_RE = re.compile(rf"^{_VALUE}/{_VALUE}(?:/{_VALUE})?$")
RAIL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# a token that claims to be a power value ("...mW/..." or bare "123/456") but may not parse
_POWER_LIKE_RE = re.compile(r"mW|^[0-9./]+$")
# give up on a stream that prints this many lines in a row without a power rail
MAX_CONSECUTIVE_MALFORMED = 50


@dataclass(frozen=True)
class TegrastatsLine:
    """The power part of one tegrastats line."""

    rail_power_mw: Dict[str, float]  # first value: instantaneous power, mW
    rail_avg_power_mw: Dict[str, float]  # second value: tegrastats' running average since it started, mW
    wallclock: Optional[datetime]  # the date prefix of newer builds (local time, 1 s resolution), else None


def _to_mw(number: str, unit: Optional[str]) -> float:
    # no unit (JetPack 4) means mW; jetson_stats' regex also admits a bare "W"
    value = float(number)
    return value * 1000.0 if unit == "W" else value


def parse_tegrastats_line(line: str) -> Optional[TegrastatsLine]:
    """Parse the power rails of one tegrastats line.

    Args:
        line: one line as tegrastats prints it, with or without the date prefix.

    Returns:
        The rails in mW (``NC`` placeholders dropped), or ``None`` for a malformed line: no rail at all,
        or a rail whose value looks like power but does not parse.
    """
    wallclock = None
    match = DATE_PREFIX_RE.match(line)
    if match:
        month, day, year, hour, minute, second = (int(g) for g in match.groups())
        try:
            wallclock = datetime(year, month, day, hour, minute, second)
        except ValueError:
            return None
        line = line[match.end():]
    tokens = line.split()
    current: Dict[str, float] = {}
    average: Dict[str, float] = {}
    for name, value in zip(tokens, tokens[1:]):
        if not RAIL_NAME_RE.match(name) or "/" not in value:
            continue
        parsed = RAIL_VALUE_RE.match(value)
        if parsed is None:
            if _POWER_LIKE_RE.search(value):
                return None  # e.g. "VDD_IN 31x0mW/3208mW" or a line cut in the middle of a value
            continue  # "RAM 2020/7852MB", "SWAP 0/3926MB": not power
        if name in SKIPPED_RAILS or name in current:
            continue
        current[name] = _to_mw(parsed.group(1), parsed.group(2))
        average[name] = _to_mw(parsed.group(3), parsed.group(4))
    if not current:
        return None
    return TegrastatsLine(current, average, wallclock)


class _LineReader:
    """Lines from a pipe with a timeout (select on the raw fd, so Python's buffering never hides data)."""

    def __init__(self, fd: int):
        self._fd = fd
        self._buffer = b""
        self.eof = False

    def readline(self, timeout_s: float) -> Optional[str]:
        """The next line without its newline; ``None`` on timeout or at end of stream (see ``eof``)."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            if self.eof:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
        elif self._buffer:  # last line without a newline
            line, self._buffer = self._buffer, b""
        else:
            return None
        return line.decode("utf-8", errors="replace")


class TegrastatsMeter(PowerMeter):
    """Runs ``tegrastats --interval MS`` and reads its stdout, one sample per line.

    Args:
        tegrastats_cmd: the command that runs tegrastats (``["tegrastats"]``, ``["sudo", "tegrastats"]``,
            or a fake script in tests); ``--interval MS`` is appended.
        interval_ms: tegrastats' print period, ms.
        read_timeout_s: longest wait for a line before the read fails (default: 5 intervals, at least 2 s).
        total_rule: overrides the per-device board-total rule (``elma.power.rails``).
        clock: the clock samples are stamped with (``time.monotonic``).
    """

    name = "tegrastats"
    self_paced = True

    def __init__(self, tegrastats_cmd: Sequence[str] = ("tegrastats",), interval_ms: int = 100,
                 read_timeout_s: Optional[float] = None, total_rule: Optional[TotalRule] = None,
                 clock: Callable[[], float] = time.monotonic):
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive (got {interval_ms})")
        if not tegrastats_cmd:
            raise ValueError("tegrastats_cmd must name a command (got an empty list)")
        self.tegrastats_cmd: List[str] = list(tegrastats_cmd)
        self.interval_ms = int(interval_ms)
        self.read_timeout_s = read_timeout_s if read_timeout_s is not None else max(2.0, 5 * interval_ms / 1000.0)
        self.total_rule = total_rule
        self.clock = clock
        self.lines = 0
        self.malformed_lines = 0
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[_LineReader] = None
        self._stderr = None
        self._pending: Optional[PowerSample] = None

    def describe(self) -> str:
        return f"tegrastats ({' '.join(self.command())})"

    def command(self) -> List[str]:
        return self.tegrastats_cmd + ["--interval", str(self.interval_ms)]

    def start(self) -> None:
        """Spawn tegrastats and wait for its first line with power rails.

        Raises:
            PowerMeterUnavailable: the command is missing, exits, or prints no power rails.
        """
        self.stop()
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL)
        except OSError as err:
            self.stop()
            raise PowerMeterUnavailable(
                f"cannot run {self.tegrastats_cmd[0]!r} ({err}); tegrastats ships with JetPack on a Jetson, "
                "elsewhere use --source keysight:RESOURCE or replay:FILE.csv") from err
        self._reader = _LineReader(self._proc.stdout.fileno())
        try:
            self._pending = self.read()
        except PowerReadError as err:
            self.stop()
            raise PowerMeterUnavailable(f"{self.describe()} gave no power sample: {err}") from err

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", errors="replace").strip()
        return text[-300:]

    def read(self) -> Optional[PowerSample]:
        if self._pending is not None:
            sample, self._pending = self._pending, None
            return sample
        if self._proc is None or self._reader is None:
            raise PowerReadError("tegrastats is not running (start() first)")
        malformed_in_a_row = 0
        while True:
            line = self._reader.readline(self.read_timeout_s)
            if line is None:
                if self._reader.eof:
                    code = self._proc.wait(timeout=5)
                    tail = self._stderr_tail()
                    raise PowerReadError(f"tegrastats exited with status {code}" + (f": {tail}" if tail else ""))
                raise PowerReadError(f"tegrastats printed nothing for {self.read_timeout_s:.1f} s")
            stamp_s = self.clock()
            if not line.strip():
                continue
            self.lines += 1
            parsed = parse_tegrastats_line(line)
            if parsed is None:
                self.malformed_lines += 1
                malformed_in_a_row += 1
                logger.debug("malformed tegrastats line skipped: %r", line[:200])
                if malformed_in_a_row >= MAX_CONSECUTIVE_MALFORMED:
                    raise PowerReadError(f"{malformed_in_a_row} tegrastats lines in a row had no power rails")
                continue
            total_mw, _ = board_total_mw(parsed.rail_power_mw, self.total_rule)
            return PowerSample(stamp_s, parsed.rail_power_mw, total_mw)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        self._reader = None
        self._pending = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


class TegrastatsLogMeter(PowerMeter):
    """Reads a tegrastats log file (``tegrastats --interval MS --logfile FILE``, or its stdout saved).

    A log has no sub-second clock, so line ``i`` is stamped ``i * interval_ms / 1000`` s after the first
    line; malformed lines keep their tick (tegrastats printed them on time) and are counted and skipped.
    ``first_wallclock`` is the first date prefix read (builds from JetPack 5 on print one) and
    ``first_wallclock_at_s`` the trace time of that line: together they tie the trace to the wall clock.

    Args:
        path: the log file.
        interval_ms: the ``--interval`` the log was recorded with, ms.
        total_rule: overrides the per-device board-total rule.
    """

    name = "tegrastats-log"
    self_paced = True

    def __init__(self, path: Path, interval_ms: int, total_rule: Optional[TotalRule] = None):
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive (got {interval_ms})")
        self.path = Path(path)
        self.interval_ms = int(interval_ms)
        self.total_rule = total_rule
        self.lines = 0
        self.malformed_lines = 0
        self.first_wallclock: Optional[datetime] = None
        self.first_wallclock_at_s: Optional[float] = None
        self._file = None

    def describe(self) -> str:
        return f"tegrastats log {self.path} (interval {self.interval_ms} ms)"

    def start(self) -> None:
        self.stop()
        try:
            self._file = self.path.open("r", encoding="utf-8", errors="replace")
        except OSError as err:
            raise PowerMeterUnavailable(f"cannot read tegrastats log {self.path} ({err.strerror}); check the path") from err
        self.lines = 0
        self.malformed_lines = 0
        self.first_wallclock = self.first_wallclock_at_s = None

    def read(self) -> Optional[PowerSample]:
        if self._file is None:
            raise PowerReadError(f"{self.path} is not open (start() first)")
        for line in self._file:
            if not line.strip():
                continue
            tick = self.lines
            self.lines += 1
            parsed = parse_tegrastats_line(line)
            if parsed is None:
                self.malformed_lines += 1
                logger.debug("%s line %d malformed, skipped", self.path, tick + 1)
                continue
            stamp_s = tick * self.interval_ms / 1000.0
            if self.first_wallclock is None and parsed.wallclock is not None:
                self.first_wallclock, self.first_wallclock_at_s = parsed.wallclock, stamp_s
            total_mw, _ = board_total_mw(parsed.rail_power_mw, self.total_rule)
            return PowerSample(stamp_s, parsed.rail_power_mw, total_mw)
        return None

    def stop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def parse_tegrastats_lines(lines: Sequence[str]) -> Tuple[List[TegrastatsLine], int]:
    """Parse many lines; returns the parsed ones and the number of malformed (non-blank) lines skipped."""
    parsed: List[TegrastatsLine] = []
    malformed = 0
    for line in lines:
        if not line.strip():
            continue
        result = parse_tegrastats_line(line)
        if result is None:
            malformed += 1
        else:
            parsed.append(result)
    return parsed, malformed
