"""A clock the test moves, for code that takes a ``clock`` callable (caches' TTLs, rate limits)."""

from __future__ import annotations


class Clock:
    """``clock()`` answers :attr:`now` (seconds), which only the test changes."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
