"""Sending a client-streaming call's requests without losing the server's status.

grpcio's own request-iterator consumer (``aio.Call._write``) turns a write that
fails because the server already ended the call into ``INTERNAL: Internal error
from Core``, overwriting the status the server sent (grpc/grpc#36066: a server
that refuses a stream before reading it, e.g. UNAVAILABLE in an outage or
RESOURCE_EXHAUSTED at admission, reaches the caller as INTERNAL about half the
time). :func:`start_writer` sends the requests itself: a write the transport
refuses ends the writing, and the caller reads the server's real status from the
response side of the call.

It uses three attributes of grpcio's call object (``_cython_call``,
``_metadata_sent``, ``_request_serializer``); where a grpcio release lacks them,
it falls back to the public ``call.write`` (and the upstream behaviour).
tests/client/test_stream_status.py fails if either path loses the status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable
from typing import Any

from grpc import aio
from grpc._cython import cygrpc


def _private_path(call: Any) -> bool:
    return all(hasattr(call, name) for name in ("_cython_call", "_metadata_sent", "_request_serializer"))


async def _send(call: Any, request: Any, private: bool) -> bool:
    """Send one request; False when the call has ended (the server's status says why)."""
    if call.done():
        return False
    if not private:
        try:
            await call.write(request)
        except (aio.AioRpcError, asyncio.InvalidStateError):
            return False
        return True
    if not call._metadata_sent.is_set():
        await call._metadata_sent.wait()
        if call.done():
            return False
    serializer = call._request_serializer
    data = serializer(request) if serializer is not None else request
    try:
        await call._cython_call.send_serialized_message(data)
    except cygrpc.InternalError:
        return False
    return True


async def _write_all(call: Any, requests: Iterable[Any] | AsyncIterable[Any]) -> None:
    private = _private_path(call)
    try:
        if isinstance(requests, AsyncIterable):
            async for request in requests:
                if not await _send(call, request, private):
                    return
        else:
            for request in requests:
                if not await _send(call, request, private):
                    return
        if not call.done():
            await call.done_writing()
    except asyncio.CancelledError:
        call.cancel()
        raise
    except BaseException:
        # The caller's request iterator failed: end the call; the caller gets this
        # exception (see :func:`writer_error`), not the CANCELLED it causes.
        call.cancel()
        raise


def start_writer(call: Any, requests: Iterable[Any] | AsyncIterable[Any]) -> asyncio.Task[None]:
    """Send ``requests`` on ``call`` (made without a request iterator) in a task."""
    return asyncio.ensure_future(_write_all(call, requests))


async def finish_writer(task: asyncio.Task[None]) -> None:
    """Stop the writer (if still running) and re-raise its own failure, if any.

    Called once the response side has ended or failed: an exception raised by the
    caller's request iterator is the real cause of a CANCELLED call."""
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return
