"""Keep the server's status when a client stream's write fails because the server ended the call.

grpcio's ``_StreamRequestMixin._write`` turns a write that fails because the
server already ended the call into ``INTERNAL: Internal error from Core``,
overwriting the status the server sent (grpc/grpc#36066: a server that refuses a
stream before reading it, e.g. UNAVAILABLE in an outage or RESOURCE_EXHAUSTED at
admission, reaches the caller as INTERNAL about half the time). Every path goes
through that method: a request iterator, ``call.write()``, and the queue an
intercepted call (any channel with interceptors) feeds its inner call from.

:func:`install` replaces it with the same method that, when the send fails,
first waits (up to :data:`STATUS_WAIT_SECONDS`) for the status the server sent
and raises that; only a call whose status never comes is ended as INTERNAL, as
upstream does at once. It is installed when :mod:`hevlayer.client` or
:mod:`hevlayer.common.server` is imported, so every hevlayer process has it.
It patches only the grpcio method it was written against (the body's calls are
checked); on another shape it leaves grpcio alone and :func:`installed` says so.
tests/client/test_stream_status.py fails if the status is lost on a plain or an
intercepted channel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("hevlayer.grpc")

STATUS_WAIT_SECONDS = 5.0
"""How long a failed send waits for the server's status before reporting INTERNAL."""

_EXPECTED_NAMES = frozenset(
    {
        "send_serialized_message",
        "set_internal_error",
        "_raise_for_status",
        "_metadata_sent",
        "_common",
        "serialize",
    }
)
_installed = False


def _mixin() -> Any:
    from grpc.aio import _call

    return _call._StreamRequestMixin


def _fits(method: Any) -> bool:
    code = getattr(method, "__code__", None)
    return code is not None and set(code.co_names) >= _EXPECTED_NAMES


async def _write(self: Any, request: Any) -> None:
    from grpc._cython import cygrpc
    from grpc.aio import _call

    if self.done():
        raise asyncio.InvalidStateError(_call._RPC_ALREADY_FINISHED_DETAILS)
    if self._done_writing_flag:
        raise asyncio.InvalidStateError(_call._RPC_HALF_CLOSED_DETAILS)
    if not self._metadata_sent.is_set():
        await self._metadata_sent.wait()
        if self.done():
            await self._raise_for_status()

    serialized_request = _call._common.serialize(request, self._request_serializer)
    try:
        await self._cython_call.send_serialized_message(serialized_request)
    except cygrpc.InternalError as err:
        # The server may have ended the call: its status is on the way.
        try:
            await asyncio.wait_for(asyncio.shield(self._cython_call.status()), STATUS_WAIT_SECONDS)
        except TimeoutError:
            self._cython_call.set_internal_error(str(err))
        await self._raise_for_status()
    except asyncio.CancelledError:
        if not self.cancelled():
            self.cancel()
        raise


def install() -> bool:
    """Patch grpcio's stream write (once); False when grpcio's method has another shape."""
    global _installed
    if _installed:
        return True
    mixin = _mixin()
    if not _fits(mixin._write):
        log.warning(
            "grpcio's stream write has an unexpected shape; not patched (grpc/grpc#36066 may "
            "report a refused stream as INTERNAL)"
        )
        return False
    mixin._write = _write
    _installed = True
    return True


def installed() -> bool:
    """Whether grpcio's stream write is the patched one."""
    return bool(_mixin()._write is _write)
