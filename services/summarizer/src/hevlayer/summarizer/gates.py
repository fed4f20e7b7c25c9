"""The process-wide provider concurrency gate of the summarizer: ``summary_gate``.

A gate bounds how many calls to one provider are in flight at once in this
process, whichever job makes them: every fold of every job draws from the same
``summary_gate``, so running more jobs does not multiply the pressure on the
summary LLM.

The summarizer has no ``description_gate``: it makes no vision call. An image's
description reaches it as ``JobObject.text``, made by whoever converted the
image (``hevlayer add``'s Object Lane or its Job Lane conversions, or an extract
worker), under *that* process's ``description_gate``
(:func:`hevlayer.ingest.vision.description_gate`), the one budget both lanes of
``add`` draw from. The summarizer never reads an object's bytes (``JobObject``
carries no source), so it has nothing to describe.

:func:`configure_gates` sets the limit once at start-up (from
``SUMMARIZER_SUMMARY_CONCURRENCY``); :func:`summary_gate` returns the process's gate.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType

from hevlayer.summarizer import metrics

DEFAULT_LIMIT = 4


class Gate:
    """An asyncio concurrency bound with in-flight accounting."""

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"gate {name!r}: limit must be >= 1, got {limit}")
        self.name = name
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self.waiting = 0
        self._semaphore = asyncio.Semaphore(limit)

    async def __aenter__(self) -> Gate:
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        metrics.GATE_IN_FLIGHT.labels(self.name).set(self.in_flight)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.in_flight -= 1
        metrics.GATE_IN_FLIGHT.labels(self.name).set(self.in_flight)
        self._semaphore.release()

    def __repr__(self) -> str:
        return f"Gate({self.name!r}, limit={self.limit}, in_flight={self.in_flight})"


@dataclass(frozen=True)
class ProviderGates:
    """The process's gates, one per provider the summarizer calls."""

    summary: Gate


_gates: ProviderGates | None = None


def configure_gates(summary_limit: int) -> ProviderGates:
    """Set the process-wide gates (at start-up, before any call goes through them)."""
    global _gates
    _gates = ProviderGates(Gate("summary", summary_limit))
    return _gates


def provider_gates() -> ProviderGates:
    """The process-wide gates (default limits until :func:`configure_gates` runs)."""
    global _gates
    if _gates is None:
        _gates = ProviderGates(Gate("summary", DEFAULT_LIMIT))
    return _gates


def summary_gate() -> Gate:
    """The gate of summary LLM calls."""
    return provider_gates().summary
