"""Client channels between hevlayer services.

Every channel gets the tracing interceptors, keepalive, large message
limits and a retry service config: idempotent-safe UNAVAILABLE failures are
retried with exponential backoff by gRPC itself before they reach the caller.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from grpc import aio

from hevlayer.common.interceptors import client_interceptors

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def retry_service_config(
    services: Sequence[str] = (),
    *,
    max_attempts: int = 5,
    initial_backoff: float = 0.1,
    max_backoff: float = 2.0,
) -> str:
    """A gRPC service config retrying UNAVAILABLE for ``services`` (all if empty)."""
    names = [{"service": s} for s in services] or [{}]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": f"{initial_backoff}s",
                        "maxBackoff": f"{max_backoff}s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def create_channel(
    target: str,
    *,
    retry_services: Sequence[str] = (),
    max_attempts: int = 5,
    traced: bool = True,
) -> aio.Channel:
    """An insecure aio channel to ``target`` (``host:port``) with tracing and retries.

    ``traced=False`` leaves out the tracing interceptors (grpc.aio runs each
    intercepted call through extra tasks): for callers that start their CLIENT
    spans themselves (:func:`hevlayer.common.interceptors.start_client_span`)."""
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry_service_config(retry_services, max_attempts=max_attempts)),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    interceptors = client_interceptors() if traced else None
    return aio.insecure_channel(target, options=options, interceptors=interceptors)
