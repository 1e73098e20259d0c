"""Token-bucket rate limits for the public routes (feedback and signals sent with a widget key).

Each client address and each user has a bucket that holds up to `burst` events and refills at
`rate` events per second; a request takes one token per event it carries. A request that
some bucket cannot pay is refused whole with HTTP 429 and `Retry-After` (seconds until every
bucket it needs holds enough), and takes nothing. Buckets live in one gateway process's memory
(no per-request I/O); with N processes the limits add up to N times the configured rate, which
docs/SECURITY.md states. The address is checked before the feedback token (so forging attempts
are throttled too), the user after it (so nobody can spend another user's budget by naming them).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass


class TokenBuckets:
    """One bucket per key, the least recently used forgotten past `max_keys` (a forgotten bucket
    comes back full, which only errs towards letting a request through)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000):
        self.rate, self.burst, self.max_keys = float(rate), int(burst), max_keys
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, last refill]

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _level(self, key: str, now: float) -> list[float]:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [float(self.burst), now]
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        return bucket

    def wait_s(self, key: str, n: int, now: float) -> float:
        """Seconds until the bucket holds n tokens (0: now; inf: never, n is over the burst)."""
        if not self.enabled:
            return 0.0
        if n > self.burst:
            return math.inf
        tokens = self._level(key, now)[0]
        return 0.0 if tokens >= n else (n - tokens) / self.rate

    def take(self, key: str, n: int, now: float) -> None:
        """Spend n tokens (after `wait_s` said 0)."""
        if self.enabled:
            self._level(key, now)[0] -= n


@dataclass
class Refused:
    """Why a request was refused: which limit ('user' or 'address') and when to retry."""

    limit: str
    retry_after_s: float
    message: str


class PublicRateLimits:
    """The gateway's limits on public feedback and signals: per client address and per user."""

    def __init__(self, gateway_cfg, max_keys: int = 100_000):
        self.by_address = TokenBuckets(gateway_cfg.rate_limit_per_address, gateway_cfg.rate_burst_per_address, max_keys)
        self.by_user = TokenBuckets(gateway_cfg.rate_limit_per_user, gateway_cfg.rate_burst_per_user, max_keys)

    def _charge(self, buckets: TokenBuckets, limit: str, counts: dict[str, int], now: float) -> Refused | None:
        waits = {key: buckets.wait_s(key, n, now) for key, n in counts.items()}
        worst = max(waits.values(), default=0.0)
        if worst > 0:
            key = max(waits, key=waits.get)
            setting = f"gateway.rate_limit_per_{limit} / gateway.rate_burst_per_{limit}"
            if math.isinf(worst):
                return Refused(limit, 60.0, f"{counts[key]} events at once is over the burst of {buckets.burst} per "
                                            f"{limit} ({setting}); send fewer per request")
            what = "this client address" if limit == "address" else f"user '{key}'"
            return Refused(limit, worst, f"rate limit: {what} may send {buckets.rate:g} events per second after a "
                                         f"burst of {buckets.burst} ({setting}); retry in {math.ceil(worst)} s")
        for key, n in counts.items():
            buckets.take(key, n, now)
        return None

    def charge_address(self, address: str, n: int, now: float | None = None) -> Refused | None:
        return self._charge(self.by_address, "address", {address: n}, time.monotonic() if now is None else now)

    def charge_users(self, counts: dict[str, int], now: float | None = None) -> Refused | None:
        return self._charge(self.by_user, "user", counts, time.monotonic() if now is None else now)
