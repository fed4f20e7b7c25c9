"""The CLI's gateway client rides out a gateway restart (``hevlayer up`` restarts a dead one).

On every unary call of the CLI's channel:

- idempotent methods (``Method.idempotent`` in :data:`hevlayer.client.methods.METHODS`) that
  fail with UNAVAILABLE (the gateway is down, or died with the call in flight) are sent again
  with exponential backoff (0.2 s doubling to 5 s), for at most ``HEVLAYER_RETRY_SECONDS``
  seconds in all (default 120; 0 turns retrying off);
- other methods are never repeated; they are sent ``wait_for_ready``: one made while the
  gateway is down waits for it to come back (within the call's deadline) instead of failing at
  once. Safe: a call that waits was never sent. One cut off in flight fails with UNAVAILABLE.

gRPC's own retry policy (:class:`hevlayer.client.options.RetryPolicy`) still applies inside
each attempt; it gives up after a second or two, far less than a restart takes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from grpc import aio

from hevlayer.client import Client, ClientOptions
from hevlayer.client.methods import METHODS
from hevlayer.common.interceptors import client_interceptors

RETRY_SECONDS_ENV = "HEVLAYER_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 120.0
INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 5.0

IDEMPOTENT = frozenset(m.full_name for m in METHODS if m.idempotent)


def riding_budget(local_up: bool, environ: Mapping[str, str] | None = None) -> float:
    """How long the CLI rides out an unavailable gateway: ``HEVLAYER_RETRY_SECONDS`` when set;
    else 120 s when the gateway is the one of a ``hevlayer up`` running in the data directory
    (which restarts it), and 0 otherwise (a gateway nobody restarts fails at once, with a hint)."""
    env = os.environ if environ is None else environ
    if env.get(RETRY_SECONDS_ENV, "").strip():
        return retry_seconds(env)
    return DEFAULT_RETRY_SECONDS if local_up else 0.0


def retry_seconds(environ: Mapping[str, str] | None = None) -> float:
    """``HEVLAYER_RETRY_SECONDS`` (ValueError naming it when it is not a number of 0 or more)."""
    raw = (os.environ if environ is None else environ).get(RETRY_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{RETRY_SECONDS_ENV}: not a number: {raw!r}") from None
    if value < 0:
        raise ValueError(f"{RETRY_SECONDS_ENV}: must be 0 or more, got {raw!r}")
    return value


def _method_name(details: aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


def _waiting(details: aio.ClientCallDetails) -> aio.ClientCallDetails:
    return aio.ClientCallDetails(details.method, details.timeout, details.metadata, details.credentials, True)


class RideOutRestarts(aio.UnaryUnaryClientInterceptor):
    """Resend idempotent unary calls on UNAVAILABLE (bounded); send the others ``wait_for_ready``."""

    def __init__(self, budget: float, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.budget = budget
        self._sleep = sleep

    async def intercept_unary_unary(
        self,
        continuation: Callable[[aio.ClientCallDetails, Any], Any],
        client_call_details: aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if self.budget <= 0:
            return await continuation(client_call_details, request)
        if _method_name(client_call_details) not in IDEMPOTENT:
            return await continuation(_waiting(client_call_details), request)
        give_up = time.monotonic() + self.budget
        backoff = INITIAL_BACKOFF
        while True:
            call = await continuation(client_call_details, request)
            try:
                await call
            except aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + backoff > give_up:
                    raise
                await self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            return call


def connect_riding_restarts(target: str, options: ClientOptions, budget: float | None = None) -> Client:
    """A :class:`Client` on a channel to ``target`` like ``Client.connect``'s, with
    :class:`RideOutRestarts` outermost (each attempt is its own traced call)."""
    seconds = retry_seconds() if budget is None else budget
    interceptors: list[aio.ClientInterceptor] = [RideOutRestarts(seconds)]
    if options.traced:
        interceptors.extend(client_interceptors((), traced=True))
    args = options.channel_args()
    if options.tls is not None:
        credentials = options.tls.credentials()
        if options.call_credentials is not None:
            credentials = grpc.composite_channel_credentials(credentials, options.call_credentials)
        channel = aio.secure_channel(target, credentials, options=args, interceptors=interceptors)
    else:
        if options.call_credentials is not None:
            raise ValueError("ClientOptions.call_credentials needs TLS (set ClientOptions.tls)")
        channel = aio.insecure_channel(target, options=args, interceptors=interceptors)
    return Client(channel, options)
