"""Per-token rate limits of the gateway (docs/security.md, "Rate limits").

Each API token has a token bucket, keyed by the token's public id (never its secret),
sized by its role (``GATEWAY_RATE_LIMITS``: a rate in calls per second and a burst).
A bucket starts full with ``burst`` calls and refills at ``rate`` per second up to
``burst``; a call takes one. A call finding less than one is refused before anything
runs: gRPC RESOURCE_EXHAUSTED (ErrorInfo reason ``RATE_LIMITED``, RetryInfo giving when
the next call would be admitted), REST 429 with ``Retry-After``. A stream counts as one
call, at its start. The buckets live in one gateway process: with N replicas a token may
make up to N times its rate.

Memory is bounded: a bucket that has refilled to full is the same as a new one, so it is
dropped (the least recently used are checked on every call); beyond ``max_buckets`` live
buckets, the least recently used is dropped even if not full.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hevlayer.common.auth import ADMIN, READER, STAGER, WORKER, Principal
from hevlayer.common.config import ConfigError
from hevlayer.common.errors import ResourceExhausted
from hevlayer.gateway.metrics import RATE_LIMITED

ROLES = (ADMIN, STAGER, WORKER, READER)
MAX_BUCKETS = 10_000

Clock = Callable[[], float]


@dataclass(frozen=True)
class Rate:
    """``per_second`` calls a second on average, at most ``burst`` at once; 0 per second: no limit."""

    per_second: float
    burst: int

    @property
    def limited(self) -> bool:
        return self.per_second > 0

    def __str__(self) -> str:
        return f"{self.per_second:g}:{self.burst}" if self.limited else "0"


DEFAULT_RATE = Rate(10_000.0, 20_000)


def parse_rates(text: str, variable: str = "GATEWAY_RATE_LIMITS") -> dict[str, Rate]:
    """The rate of every role from ``role=rate:burst`` entries separated by commas (``rate``
    0 or ``role=0``: no limit); a role not named keeps :data:`DEFAULT_RATE`. ConfigError
    naming ``variable`` and the entry when one is malformed."""
    rates = dict.fromkeys(ROLES, DEFAULT_RATE)
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        role, sep, value = entry.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise ConfigError(
                f"{variable}: entry {entry!r}: expected role=rate:burst with role one of {', '.join(ROLES)}"
            )
        per_second_text, _, burst_text = value.strip().partition(":")
        try:
            per_second = float(per_second_text)
            burst = int(burst_text) if burst_text else max(1, math.ceil(per_second))
        except ValueError:
            raise ConfigError(
                f"{variable}: entry {entry!r}: rate must be a number and burst an integer"
            ) from None
        if not math.isfinite(per_second) or per_second < 0:
            raise ConfigError(f"{variable}: entry {entry!r}: rate must be a finite number >= 0")
        if per_second > 0 and burst < 1:
            raise ConfigError(f"{variable}: entry {entry!r}: burst must be >= 1")
        rates[role] = Rate(per_second, burst)
    return rates


class TokenBucket:
    """``rate.burst`` calls at once, refilled at ``rate.per_second``; times come from the
    caller (a monotonic clock), so the bucket itself never reads the time."""

    __slots__ = ("rate", "tokens", "updated")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(
                float(self.rate.burst), self.tokens + (now - self.updated) * self.rate.per_second
            )
            self.updated = now

    def take(self, now: float) -> float:
        """0.0 when a call is admitted at ``now`` (one taken); else the seconds until one
        would be (nothing taken)."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate.per_second

    def full_at(self) -> float:
        """The time at which the bucket is full again (then it is the same as a new one)."""
        return self.updated + (self.rate.burst - self.tokens) / self.rate.per_second


class RateLimiter:
    """One :class:`TokenBucket` per API token (by id), sized by the token's role."""

    def __init__(
        self, rates: Mapping[str, Rate], clock: Clock = time.monotonic, max_buckets: int = MAX_BUCKETS
    ) -> None:
        if max_buckets < 1:
            raise ValueError("RateLimiter: max_buckets must be >= 1")
        self.rates = dict(rates)
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        """Buckets held now."""
        return len(self._buckets)

    def check(self, principal: Principal, transport: str) -> None:
        """Count one call of ``principal``; ResourceExhausted (reason RATE_LIMITED, RetryInfo)
        when its token is over its role's rate."""
        rate = self.rates.get(principal.role, DEFAULT_RATE)
        if not rate.limited:
            return
        now = self._clock()
        self._evict(now)
        bucket = self._buckets.get(principal.token_id)
        if bucket is None or bucket.rate != rate:
            bucket = TokenBucket(rate, now)
            self._buckets[principal.token_id] = bucket
            if len(self._buckets) > self._max_buckets:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(principal.token_id)
        wait = bucket.take(now)
        if wait:
            RATE_LIMITED.labels(principal.role, transport).inc()
            raise ResourceExhausted(
                f"{principal.describe()} is over its rate limit of {rate.per_second:g} calls per second "
                f"(burst {rate.burst}) on this gateway (GATEWAY_RATE_LIMITS); retry after the RetryInfo "
                "delay",
                reason="RATE_LIMITED",
                retry_after=wait,
                metadata={
                    "role": principal.role,
                    "calls_per_second": f"{rate.per_second:g}",
                    "burst": str(rate.burst),
                },
            )

    def _evict(self, now: float) -> None:
        """Drop the least recently used buckets that are full again."""
        while self._buckets:
            token_id, bucket = next(iter(self._buckets.items()))
            if bucket.full_at() > now:
                return
            del self._buckets[token_id]
