"""Per-device rate limit: a token bucket per device on an injected monotonic clock."""

import threading
import time
from typing import Callable, Dict


class TokenBucket:
    """``burst`` requests at once, refilled at ``rate_per_s``; time from ``clock`` (seconds, monotonic)."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1 (got {rate_per_s}, {burst})")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._at_s = clock()

    def _refill(self) -> None:
        now_s = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now_s - self._at_s) * self.rate_per_s)
        self._at_s = now_s

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate_per_s)


class RateLimiter:
    """One ``TokenBucket`` per device, thread-safe."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate_per_s, self.burst, self.clock = rate_per_s, burst, clock
        self._buckets: Dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def take(self, device: str) -> float:
        """0.0 when the request may proceed, else the seconds to wait."""
        with self._lock:
            bucket = self._buckets.get(device)
            if bucket is None:
                bucket = self._buckets[device] = TokenBucket(self.rate_per_s, self.burst, self.clock)
            return 0.0 if bucket.take() else bucket.wait_s()
