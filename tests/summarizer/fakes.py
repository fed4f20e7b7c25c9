"""Test doubles of the summarizer's two neighbours, both real servers on loopback.

- :class:`FakeLLM`: an OpenAI-compatible ``POST /v1/chat/completions`` HTTP
  server (aiohttp). It answers a deterministic summary naming the children
  it was shown, records every request, can fail the next requests with given
  statuses, and can hold replies (all, or those after the first ``hold_after``)
  until released (for concurrency and kill tests).
- :class:`FakeStaging`: a gRPC ``StagingService`` (StageDocuments only) that
  records what it was asked to stage, can answer UNAVAILABLE a number of
  times, and can reject given document ids.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
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


class FakeStaging(staging_pb2_grpc.StagingServiceServicer):
    """A gRPC StagingService that records StageDocuments calls."""

    def __init__(self) -> None:
        self.requests: list[staging_pb2.StageDocumentsRequest] = []
        self.documents: dict[str, document_pb2.Document] = {}
        self.order: list[str] = []
        self.unavailable = 0
        self.reject: set[str] = set()
        self.port = 0
        self._server: aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metadata(self, document_id: str) -> dict[str, Any]:
        """The first chunk's metadata of a staged document, as a dict."""
        chunk = self.documents[document_id].chunks[0]
        return dict(json.loads(json_format.MessageToJson(chunk.metadata)))

    async def start(self) -> FakeStaging:
        self._server = aio.server()
        staging_pb2_grpc.add_StagingServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    async def StageDocuments(self, request_iterator: Any, context: aio.ServicerContext) -> Any:
        if self.unavailable > 0:
            self.unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")
        async for request in request_iterator:
            self.requests.append(request)
            results = []
            for document in request.documents:
                if document.id in self.reject:
                    results.append(
                        staging_pb2.StageResult(
                            document_id=document.id,
                            outcome=staging_pb2.STAGE_OUTCOME_REJECTED,
                            error=document_pb2.DocumentError(code=3, message="scripted rejection"),
                        )
                    )
                    continue
                self.documents[document.id] = document
                self.order.append(document.id)
                results.append(
                    staging_pb2.StageResult(
                        document_id=document.id,
                        outcome=staging_pb2.STAGE_OUTCOME_STAGED,
                        fencing_token=len(self.order),
                        chunk_count=len(document.chunks),
                    )
                )
            yield staging_pb2.StageDocumentsResponse(results=results)

    async def _unimplemented(self, context: aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def EnqueueDocuments(self, request_iterator: Any, context: aio.ServicerContext) -> Any:
        return await self._unimplemented(context)

    async def ReadChunks(
        self, request: Any, context: aio.ServicerContext
    ) -> AsyncIterator[staging_pb2.ReadChunksResponse]:
        await self._unimplemented(context)
        nothing: tuple[staging_pb2.ReadChunksResponse, ...] = ()
        for response in nothing:  # an async generator, like the real server streaming method
            yield response

    async def GetDocument(self, request: Any, context: aio.ServicerContext) -> Any:
        return await self._unimplemented(context)

    async def ListDocuments(
        self, request: Any, context: aio.ServicerContext
    ) -> AsyncIterator[staging_pb2.ListDocumentsResponse]:
        await self._unimplemented(context)
        nothing: tuple[staging_pb2.ListDocumentsResponse, ...] = ()
        for response in nothing:  # an async generator, like the real server streaming method
            yield response

    async def DeleteDocuments(self, request: Any, context: aio.ServicerContext) -> Any:
        return await self._unimplemented(context)
