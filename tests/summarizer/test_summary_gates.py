"""The summarizer's process-wide provider gate (``summary_gate``). The Transformation Cache it
folds through is hevlayer.ingest.transform's, tested in tests/ingest/test_transform.py."""

from __future__ import annotations

import asyncio

import pytest

from hevlayer.summarizer import gates
from hevlayer.summarizer.gates import Gate

GUARD = 30.0  # a hang guard, not a timing assertion


async def test_gate_bounds_concurrency() -> None:
    gate = Gate("test", 3)
    inside = 0
    peak = 0
    full = asyncio.Event()

    async def call() -> None:
        nonlocal inside, peak
        async with gate:
            inside += 1
            peak = max(peak, inside)
            if inside == gate.limit:
                full.set()
            await full.wait()
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(call() for _ in range(10))), GUARD)
    assert peak == 3
    assert gate.peak == 3
    assert gate.in_flight == 0


def test_process_wide_gates_are_configurable() -> None:
    configured = gates.configure_gates(2)
    try:
        assert gates.summary_gate() is configured.summary
        assert gates.summary_gate().limit == 2
        assert gates.provider_gates() is configured
    finally:
        gates.configure_gates(gates.DEFAULT_LIMIT)
    with pytest.raises(ValueError, match="limit"):
        Gate("bad", 0)
