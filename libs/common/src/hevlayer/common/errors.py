"""Errors of the transport-free cores and their mapping to gRPC statuses.

Business logic raises :class:`ServiceError` subclasses; the server
interceptor turns them into a gRPC status whose ``grpc-status-details-bin``
trailer carries a ``google.rpc.Status`` with ``BadRequest`` field
violations, ``ErrorInfo`` and ``RetryInfo`` details (read them with
``grpc_status.rpc_status.from_call``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "hevlayer.dev"


@dataclass(frozen=True)
class Violation:
    """One invalid field: its path and what is wrong with it."""

    field: str
    description: str


class ServiceError(Exception):
    """Base of every error that maps to a non-OK gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: Sequence[Violation] = (),
        retry_after: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.violations = tuple(violations)
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})

    def to_status_proto(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` of this error, details included."""
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN)
        info.metadata.update(self.metadata)
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(self.retry_after * 1000))
            packed = any_pb2.Any()
            packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            details.append(packed)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)

    def to_grpc_status(self) -> grpc.Status:
        """A ``grpc.Status`` carrying the rich details in trailing metadata."""
        return rpc_status.to_status(self.to_status_proto())


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT: a request field is malformed (the message names it)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """An error about one field, with the field's path in the message."""
        return cls(f"{field}: {description}", violations=[Violation(field, description)])


class NotFound(ServiceError):
    """NOT_FOUND: the named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    """ALREADY_EXISTS: a resource with that id exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    """FAILED_PRECONDITION: the system is not in the state the call needs."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unavailable(ServiceError):
    """UNAVAILABLE: a dependency is down; retry with backoff (RetryInfo says when)."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: object) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)  # type: ignore[arg-type]


class ResourceExhausted(ServiceError):
    """RESOURCE_EXHAUSTED: a limit was reached (too many calls at once, a request too
    large for a bound); retry after RetryInfo's delay, or send less."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(ServiceError):
    """UNAUTHENTICATED: the call carries no token, or one that is unknown or revoked.
    The message never contains the token."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """PERMISSION_DENIED: a valid token whose role or pipelines do not cover the call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unimplemented(ServiceError):
    """UNIMPLEMENTED: the server does not offer the method (an older peer)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(ServiceError):
    """INTERNAL: a bug; the message is safe to show, details are in the logs."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unavailable,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unimplemented,
        Internal,
    )
}


def status_from_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a failed call (details kept when present)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def service_error_from_rpc_error(error: grpc.aio.AioRpcError) -> ServiceError:
    """Rebuild the ServiceError a downstream service raised, details included."""
    status = status_from_rpc_error(error)
    cls = _BY_CODE.get(error.code(), ServiceError)
    violations: list[Violation] = []
    reason: str | None = None
    retry_after: float | None = None
    metadata: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(Violation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            metadata.update(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToMilliseconds() / 1000
    if cls is ServiceError:
        err = ServiceError(
            status.message,
            reason=reason,
            violations=violations,
            retry_after=retry_after,
            metadata=metadata,
        )
        err.code = error.code()
        return err
    if cls is Unavailable:
        return Unavailable(
            status.message,
            reason=reason,
            violations=violations,
            retry_after=retry_after if retry_after is not None else 1.0,
            metadata=metadata,
        )
    return cls(
        status.message,
        reason=reason,
        violations=violations,
        retry_after=retry_after,
        metadata=metadata,
    )


GOOGLE_RPC_CODE_NAMES = {value: name for name, value in code_pb2.Code.items()}
