"""Summary providers: the extractive one, and the OpenAI-compatible HTTP one
against a fake chat-completions server on loopback."""

from __future__ import annotations

import asyncio

import pytest
from support.fakes.llm import FakeLLM, LLMFailure

from hevlayer.summarizer.providers import (
    DIRECTORY_KIND,
    ChildInput,
    ExtractiveProvider,
    OpenAIChatProvider,
    ProviderError,
    build_prompt,
    lead,
)

PY = (
    "#!/usr/bin/env python\n# Copyright 2024 Someone\n"
    '"""Entry point of the claimer.\n\nMore text."""\nimport x\n'
)
MD = "# Hevlayer\n\n[![badge](x)](y)\n\ngRPC services that turn documents into vectors. Second sentence.\n"
GO = "// Package store keeps documents. It is safe.\npackage store\n"


def _children() -> list[ChildInput]:
    return [
        ChildInput(
            "app/", DIRECTORY_KIND, "Directory of 2 files (code 2).\n- a.py: Does A.\n- b.py: Does B.", "k1"
        ),
        ChildInput("README.md", "text", MD, "h1"),
        ChildInput("main.py", "code", PY, "h2"),
        ChildInput("store.go", "code", GO, "h3"),
        ChildInput("logo.png", "image", "", "h4"),
    ]


async def test_extractive_leads_and_header() -> None:
    provider = ExtractiveProvider(max_words=200)
    text = await provider.summarize(_children())
    lines = text.splitlines()
    assert lines[0] == "Directory of 4 files (code 2, image 1, text 1) and 1 sub-directory."
    assert "- app/: a.py: Does A.; b.py: Does B." in lines
    assert "- README.md: Hevlayer — gRPC services that turn documents into vectors." in lines
    assert "- main.py: Entry point of the claimer." in lines
    assert "- store.go: Package store keeps documents." in lines
    assert "- logo.png" in lines
    assert await provider.summarize(_children()) == text  # deterministic


async def test_extractive_respects_the_word_budget() -> None:
    provider = ExtractiveProvider(max_words=60)
    many = [ChildInput(f"f{i}.txt", "text", "word " * 50, f"h{i}") for i in range(40)]
    text = await provider.summarize(many)
    assert len(text.split()) <= 60 + 12  # the "... and N more" line may round up a little
    assert "more:" in text.splitlines()[-1]
    assert text.splitlines()[-1].startswith("- … and ")
    assert await ExtractiveProvider().summarize([]) == "Empty directory."


def test_lead_of_failed_and_plain_children() -> None:
    assert lead(ChildInput("x/", DIRECTORY_KIND, failed=True)) == "(summary unavailable)"
    assert lead(ChildInput("notes", "text", "First one. Second one.")) == "First one."
    assert lead(ChildInput("empty.py", "code", "")) == ""
    assert lead(ChildInput("doc.rst", "text", "Title\n=====\n\nBody here. More.")) == "Title — Body here."


def test_prompt_lists_children_and_clips() -> None:
    prompt = build_prompt(_children(), max_child_chars=20, max_prompt_chars=120)
    assert "### app/ (directory)" in prompt
    assert "Other children (names only):" in prompt
    assert build_prompt([], 10, 10) == "The directory is empty."


def _http(llm: FakeLLM, **kwargs: object) -> OpenAIChatProvider:
    return OpenAIChatProvider(
        llm.base_url,
        "fake-model",
        backoff_base=0.001,
        backoff_max=0.01,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_http_provider_request_and_reply(fake_llm: FakeLLM) -> None:
    fake_llm.api_key = "sk-test"
    provider = _http(fake_llm, api_key="sk-test", max_tokens=123, max_words=50)
    try:
        text = await provider.summarize(_children())
    finally:
        await provider.close()
    assert text == "LLM summary of 5 children: app/, README.md, main.py, store.go, logo.png."
    assert len(fake_llm.requests) == 1
    body = fake_llm.requests[0]
    assert body["model"] == "fake-model"
    assert body["max_tokens"] == 123
    assert body["temperature"] == 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "at most 50 words" in body["messages"][0]["content"]
    assert fake_llm.headers[0]["Authorization"] == "Bearer sk-test"


async def test_http_provider_retries_429_and_5xx(fake_llm: FakeLLM) -> None:
    fake_llm.failures = [LLMFailure(429, retry_after="0"), LLMFailure(503), LLMFailure(500)]
    provider = _http(fake_llm, max_attempts=4)
    try:
        text = await provider.summarize(_children()[:1])
    finally:
        await provider.close()
    assert text.startswith("LLM summary of 1 children")
    assert len(fake_llm.requests) == 4


async def test_http_provider_gives_up(fake_llm: FakeLLM) -> None:
    fake_llm.failures = [LLMFailure(502)] * 3
    provider = _http(fake_llm, max_attempts=3)
    try:
        with pytest.raises(ProviderError, match=r"HTTP 502 .*after 3 attempts"):
            await provider.summarize(_children())
        assert len(fake_llm.requests) == 3
        fake_llm.failures = [LLMFailure(400)]
        with pytest.raises(ProviderError, match="HTTP 400"):
            await provider.summarize(_children())
        assert len(fake_llm.requests) == 4  # a client error is not retried
        fake_llm.malformed = True
        with pytest.raises(ProviderError, match="malformed"):
            await provider.summarize(_children())
    finally:
        await provider.close()


async def test_http_provider_unreachable() -> None:
    provider = OpenAIChatProvider("http://127.0.0.1:9/v1", "m", max_attempts=2, backoff_base=0.001, timeout=5)
    try:
        with pytest.raises(ProviderError, match="after 2 attempts"):
            await provider.summarize(_children())
    finally:
        await provider.close()


async def test_http_provider_calls_run_concurrently(fake_llm: FakeLLM) -> None:
    fake_llm.hold = asyncio.Event()
    provider = _http(fake_llm)
    try:
        calls = [asyncio.create_task(provider.summarize(_children()[:i])) for i in range(1, 4)]

        await asyncio.wait_for(fake_llm.wait_in_flight(3), 30)  # hang guard
        fake_llm.hold.set()
        texts = await asyncio.wait_for(asyncio.gather(*calls), 30)
    finally:
        await provider.close()
    assert fake_llm.peak == 3
    assert [t.split(":")[0] for t in texts] == [f"LLM summary of {i} children" for i in range(1, 4)]
    # The prompt version names what shapes the output besides the inputs.
    assert provider.prompt_version != _http(fake_llm, max_words=10).prompt_version
