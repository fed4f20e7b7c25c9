"""ServiceError -> google.rpc.Status with details, and back."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc import aio
from hypothesis import given
from hypothesis import strategies as st

from hevlayer.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
    Violation,
    service_error_from_rpc_error,
)


def _details(status: object) -> dict[str, object]:
    found: dict[str, object] = {}
    for detail in status.details:  # type: ignore[attr-defined]
        for cls in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.__name__] = message
    return found


def test_invalid_argument_carries_field_violation() -> None:
    err = InvalidArgument.field("documents[2].chunks[0].id", "duplicate chunk id 'a'")
    status = err.to_status_proto()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "documents[2].chunks[0].id: duplicate chunk id 'a'"
    details = _details(status)
    bad = details["BadRequest"]
    assert [(v.field, v.description) for v in bad.field_violations] == [  # type: ignore[attr-defined]
        ("documents[2].chunks[0].id", "duplicate chunk id 'a'")
    ]
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"  # type: ignore[attr-defined]


def test_unavailable_carries_retry_info() -> None:
    status = Unavailable("PostgreSQL is unreachable", retry_after=2.5).to_status_proto()
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    retry = _details(status)["RetryInfo"]
    assert retry.retry_delay.ToMilliseconds() == 2500  # type: ignore[attr-defined]


def test_grpc_status_has_details_trailer() -> None:
    status = NotFound("pipeline 'x' not found", metadata={"pipeline_id": "x"}).to_grpc_status()
    assert status.code == grpc.StatusCode.NOT_FOUND
    keys = [k for k, _ in status.trailing_metadata]
    assert keys == ["grpc-status-details-bin"]


@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=30), st.text(max_size=60)), min_size=1, max_size=5),
    st.text(max_size=80),
)
def test_violations_round_trip(pairs: list[tuple[str, str]], message: str) -> None:
    err = InvalidArgument(message, violations=[Violation(f, d) for f, d in pairs])
    parsed = error_details_pb2.BadRequest()
    for detail in err.to_status_proto().details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            detail.Unpack(parsed)
    assert [(v.field, v.description) for v in parsed.field_violations] == pairs


def test_already_exists_reason() -> None:
    assert _details(AlreadyExists("dup").to_status_proto())["ErrorInfo"].reason == "ALREADY_EXISTS"  # type: ignore[attr-defined]


async def test_a_method_the_server_lacks_comes_back_as_unimplemented() -> None:
    """A peer without the method (an older gateway without StreamLeases) answers UNIMPLEMENTED;
    the caller gets :class:`Unimplemented` and can tell it by class, without grpc."""
    server = aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/hevlayer.lease.v1.LeaseService/StreamLeases")
            try:
                await call(b"")
            except aio.AioRpcError as error:
                rebuilt = service_error_from_rpc_error(error)
            else:
                raise AssertionError("a server without services answered the call")
    finally:
        await server.stop(None)
    assert isinstance(rebuilt, Unimplemented)
    assert rebuilt.code is grpc.StatusCode.UNIMPLEMENTED
