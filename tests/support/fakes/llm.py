"""A fake LLM: an OpenAI-compatible ``POST /v1/chat/completions`` HTTP server (aiohttp) on
loopback, for the summarizer's ``openai`` provider (no LLM runs here).

:class:`FakeLLM` answers a deterministic summary naming the children it was shown, records
every request, can fail the next requests with given statuses (:class:`LLMFailure`), and can
hold replies (all, or those after the first ``hold_after``) until released (for concurrency and
kill tests).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hevlayer.devstack.ports import free_port

_CHILD = re.compile(r"^### (\S+) \(", re.M)


@dataclass
class LLMFailure:
    """One scripted failure: the status to answer and an optional Retry-After."""

    status: int
    retry_after: str | None = None


@dataclass
class FakeLLM:
    """A fake OpenAI-compatible chat-completions server."""

    api_key: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    failures: list[LLMFailure] = field(default_factory=list)
    hold: asyncio.Event | None = None
    hold_after: int = 0
    """With ``hold``: the first ``hold_after`` requests answer at once, later ones wait for it."""
    malformed: bool = False
    in_flight: int = 0
    peak: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """What SUMMARIZER_LLM_URL should be."""
        return f"http://127.0.0.1:{self.port}/v1"

    @staticmethod
    def reply_for(user_message: str) -> str:
        """The summary the fake answers for a user message."""
        names = _CHILD.findall(user_message)
        return f"LLM summary of {len(names)} children: {', '.join(names) or '(none)'}."

    async def start(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_in_flight(self, count: int) -> None:
        """Return once ``count`` completions are being answered at the same time."""
        while self.in_flight < count:
            self.arrived.clear()
            await self.arrived.wait()

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        if self.failures:
            failure = self.failures.pop(0)
            headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            return web.json_response(
                {"error": {"message": "scripted"}}, status=failure.status, headers=headers
            )
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.arrived.set()
        try:
            if self.hold is not None and len(self.requests) > self.hold_after:
                await self.hold.wait()
        finally:
            self.in_flight -= 1
        if self.malformed:
            return web.json_response({"choices": []})
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply_for(user)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
