"""A background thread that reads a PowerMeter on the monotonic clock into a bounded buffer.

When the source fails mid-run (tegrastats dies, the supply times out or drops the connection), the
failure becomes a ``Gap`` in the trace, the meter is stopped and re-opened every ``retry_s`` until it
answers again or the sampler stops: the run being measured never sees an exception. The thread is a
daemon and ``stop()`` is registered with ``atexit``, so a forgotten sampler never keeps Python alive
nor leaves tegrastats running.
"""

import atexit
import bisect
import logging
import threading
import time
from typing import Callable, List, Optional

from elma.errors import PowerMeterError
from elma.power.base import PowerMeter, PowerSample
from elma.power.integrate import Gap, PowerTrace, integrate

logger = logging.getLogger(__name__)


class _SampleBuffer:
    """Samples in time order, at most ``max_samples`` (the oldest are dropped), with bisect on time."""

    def __init__(self, max_samples: int):
        self.max_samples = max_samples
        self._samples: List[PowerSample] = []
        self._times: List[float] = []
        self._head = 0  # index of the oldest kept sample; the list is compacted when head passes max_samples
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._times) - self._head

    def append(self, sample: PowerSample) -> bool:
        if len(self) and sample.timestamp_s < self._times[-1]:
            logger.warning("power sample at %.6f s is older than the last one (%.6f s); dropped", sample.timestamp_s, self._times[-1])
            return False
        self._samples.append(sample)
        self._times.append(sample.timestamp_s)
        if len(self) > self.max_samples:
            self._head += 1
            self.dropped += 1
            if self._head >= self.max_samples:
                del self._samples[:self._head]
                del self._times[:self._head]
                self._head = 0
        return True

    def latest_s(self) -> Optional[float]:
        return self._times[-1] if len(self) else None

    def window(self, start_s: float, end_s: float) -> List[PowerSample]:
        lo = max(self._head, bisect.bisect_right(self._times, start_s, self._head) - 1)
        hi = min(len(self._times), bisect.bisect_left(self._times, end_s, self._head) + 1)
        return self._samples[lo:hi]

    def all(self) -> List[PowerSample]:
        return self._samples[self._head:]


class PowerSampler:
    """Samples a meter in a background thread; a context manager.

    Args:
        meter: the source. Its clock must be this sampler's ``clock`` (both ``time.monotonic`` by default).
        interval_s: period between reads for meters the sampler paces (sysfs, SCPI), s; meters that wait
            for their own next sample (tegrastats, jtop, replay) are read back to back.
        max_samples: buffer bound; the oldest samples are dropped beyond it (``dropped_samples`` counts them).
        retry_s: wait between attempts to reopen a failed source, s.
        clock: monotonic clock, s.
    """

    def __init__(self, meter: PowerMeter, interval_s: float = 0.1, max_samples: int = 1_000_000, retry_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive (got {interval_s})")
        if max_samples < 2:
            raise ValueError(f"max_samples must be at least 2 (got {max_samples})")
        if retry_s < 0:
            raise ValueError(f"retry_s must be >= 0 (got {retry_s})")
        self.meter = meter
        self.interval_s = float(interval_s)
        self.retry_s = float(retry_s)
        self.clock = clock
        self._buffer = _SampleBuffer(max_samples)
        self._gaps: List[Gap] = []
        self._open_gap: Optional[Gap] = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._finished = False
        self.exhausted = False  # a finite source (log, CSV) ran out of samples
        self.failures = 0  # failed reads and failed reopen attempts
        self.started_s: Optional[float] = None

    # ---- life cycle -------------------------------------------------------------------------------
    def start(self) -> "PowerSampler":
        """Open the meter (raising ``PowerMeterUnavailable`` here, in the caller) and start the thread."""
        if self._thread is not None:
            raise ValueError("this PowerSampler was already started; make a new one")
        self.meter.start()
        self.started_s = self.clock()
        self._thread = threading.Thread(target=self._run, name=f"elma-power-{self.meter.name}", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and release the meter. Idempotent; an open gap ends now."""
        thread = self._thread
        if thread is None or (self._stop.is_set() and not thread.is_alive()):
            return
        self._stop.set()
        thread.join(timeout_s)
        if thread.is_alive():  # a read blocked past its own timeout: closing the meter unblocks it
            logger.warning("power sampler thread did not stop within %.1f s; closing the meter under it", timeout_s)
            self.meter.stop()
            thread.join(timeout_s)
        with self._cond:
            if self._open_gap is not None:
                self._close_gap(self.clock())
            self._finished = True
            self._cond.notify_all()
        atexit.unregister(self.stop)

    def __enter__(self) -> "PowerSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        meter_open = True
        next_tick_s = self.clock()
        try:
            while not self._stop.is_set():
                if not meter_open:
                    try:
                        self.meter.start()
                        meter_open = True
                        logger.info("power source %s reopened", self.meter.name)
                    except PowerMeterError as err:
                        self.failures += 1
                        logger.debug("reopening %s failed: %s", self.meter.name, err)
                        self._stop.wait(self.retry_s)
                        continue
                try:
                    sample = self.meter.read()
                except Exception as err:  # PowerReadError by contract; anything else is a backend bug, still only a gap
                    if self._stop.is_set():
                        break
                    self.failures += 1
                    if not isinstance(err, PowerMeterError):
                        logger.exception("power source %s raised an unexpected error", self.meter.name)
                    self._record_failure(str(err) or type(err).__name__)
                    self.meter.stop()
                    meter_open = False
                    self._stop.wait(self.retry_s)
                    continue
                if sample is None:
                    self.exhausted = True
                    break
                with self._cond:
                    if self._buffer.append(sample) and self._open_gap is not None:
                        self._close_gap(sample.timestamp_s)
                    self._cond.notify_all()
                if not self.meter.self_paced:
                    next_tick_s += self.interval_s
                    delay_s = next_tick_s - self.clock()
                    if delay_s > 0:
                        self._stop.wait(delay_s)
                    else:  # fell behind (slow instrument): skip the missed ticks rather than burst
                        next_tick_s = self.clock()
        finally:
            self.meter.stop()
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _record_failure(self, reason: str) -> None:
        with self._cond:
            if self._open_gap is None:
                latest_s = self._buffer.latest_s()
                start_s = latest_s if latest_s is not None else self.started_s
                self._open_gap = Gap(start_s, None, reason)
                logger.warning("power source %s failed (%s); recording a gap and retrying every %.1f s",
                               self.meter.name, reason, self.retry_s)
            self._cond.notify_all()

    def _close_gap(self, end_s: float) -> None:  # caller holds self._cond
        gap = self._open_gap
        self._gaps.append(Gap(gap.start_s, max(end_s, gap.start_s), gap.reason))
        self._open_gap = None

    # ---- reading --------------------------------------------------------------------------------------
    def gaps(self) -> List[Gap]:
        """Closed gaps, plus the open one (``end_s=None``) while the source is down."""
        with self._cond:
            return list(self._gaps) + ([self._open_gap] if self._open_gap is not None else [])

    def trace(self, start_s: Optional[float] = None, end_s: Optional[float] = None) -> PowerTrace:
        """A snapshot: all kept samples, or only those a window ``[start_s, end_s]`` needs."""
        with self._cond:
            if start_s is None or end_s is None:
                samples = self._buffer.all()
            else:
                samples = self._buffer.window(start_s, end_s)
            gaps = list(self._gaps) + ([self._open_gap] if self._open_gap is not None else [])
        return PowerTrace(samples, gaps, self.meter.describe())

    def window(self, start_s: float, end_s: float) -> PowerTrace:
        return self.trace(start_s, end_s)

    def wait_until(self, t_s: float, timeout_s: float) -> bool:
        """Wait until a sample at or after ``t_s`` exists (True), or the timeout passes / sampling ends (False)."""
        def reached() -> bool:
            latest_s = self._buffer.latest_s()
            return (latest_s is not None and latest_s >= t_s) or self._finished
        with self._cond:
            self._cond.wait_for(reached, timeout=max(0.0, timeout_s))
            latest_s = self._buffer.latest_s()
            return latest_s is not None and latest_s >= t_s

    @property
    def sample_count(self) -> int:
        with self._cond:
            return len(self._buffer)

    @property
    def dropped_samples(self) -> int:
        return self._buffer.dropped

    def read_cumulative_mj(self) -> Optional[float]:
        """Board-total energy from the first kept sample to the latest, mJ (STYLE.md's cumulative reading).

        ``None`` until two samples with a board total exist. Gaps are not integrated.
        """
        trace = self.trace()
        if len(trace.samples) < 2:
            return None
        times = [s.timestamp_s for s in trace.samples]
        totals = [float("nan") if s.total_power_mw is None else s.total_power_mw for s in trace.samples]
        result = integrate(times, totals, times[0], times[-1], trace.gaps)
        return result.energy_mj if result.measured_s > 0 else None
