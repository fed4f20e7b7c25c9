"""The one error type of the client: a failed call, with its rich status kept.

A failed RPC raises a :class:`~hevlayer.common.errors.ServiceError` subclass
chosen by its status code (:class:`NotFound`, :class:`InvalidArgument`, ...;
:class:`ServiceError` itself for codes without a subclass). Every error keeps
what the server sent in its ``google.rpc.Status``: ``code``, ``message``,
``reason`` (``ErrorInfo``), ``violations`` (``BadRequest`` field violations,
each naming a field), ``retry_after`` (``RetryInfo``, seconds) and
``metadata``. The same classes are what the services raise, so a service
that calls another sees the error its peer raised.
"""

from __future__ import annotations

import grpc
from grpc import aio

from hevlayer.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Violation,
    service_error_from_rpc_error,
)

__all__ = [
    "DEFINITE_FAILURES",
    "AlreadyExists",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ServiceError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Violation",
    "error_from_rpc",
    "is_definite_failure",
    "is_transient",
]

DEFINITE_FAILURES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""Codes with which the server refused a call before changing anything."""

TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


def error_from_rpc(error: aio.AioRpcError) -> ServiceError:
    """The :class:`ServiceError` of a failed call, its details kept."""
    return service_error_from_rpc_error(error)


def is_definite_failure(error: ServiceError) -> bool:
    """True when the call surely changed nothing (the server refused it); False when
    it may have been applied (timeouts, lost connections, internal errors)."""
    return error.code in DEFINITE_FAILURES


def is_transient(error: ServiceError) -> bool:
    """Whether the same call may succeed later (a later reconciliation, a later batch).

    Not a licence to repeat a non-idempotent call at once: see
    :mod:`hevlayer.client.options` for what the client itself retries."""
    return error.code in TRANSIENT
