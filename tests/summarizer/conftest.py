"""Fixtures of the summarizer tests: a fake LLM server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.fakes.llm import FakeLLM


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLLM]:
    llm = await FakeLLM().start()
    try:
        yield llm
    finally:
        await llm.stop()
