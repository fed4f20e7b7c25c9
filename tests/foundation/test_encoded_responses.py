"""Servicers answering with pre-encoded wire bytes (hevlayer.common.encoded), through a
real server (with the observing interceptor) and a real channel."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from hypothesis import given
from hypothesis import strategies as st

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2 as pb
from hevlayer.api.lease.v1 import lease_pb2_grpc
from hevlayer.common.encoded import Encoded, add_servicer, method_handlers, serialize, varint
from hevlayer.common.interceptors import ServerInterceptor

LEASE_SERVICE = pb.DESCRIPTOR.services_by_name["LeaseService"]
LEASES = pb.ClaimDocumentsResponse(
    leases=[document_pb2.Lease(document_id=f"doc-{n}", fencing_token=n + 1, stage="embed") for n in range(3)]
)


class _Servicer:
    """Answers ClaimDocuments and StreamLeases with bytes, the other two with messages."""

    async def ClaimDocuments(
        self, request: pb.ClaimDocumentsRequest, context: aio.ServicerContext
    ) -> Encoded:
        return Encoded(LEASES.SerializeToString())

    async def HeartbeatLeases(
        self, request: pb.HeartbeatLeasesRequest, context: aio.ServicerContext
    ) -> pb.HeartbeatLeasesResponse:
        return pb.HeartbeatLeasesResponse(
            results=[pb.HeartbeatResult(document_id=ref.document_id, extended=True) for ref in request.leases]
        )

    async def TransitionDocuments(
        self, request: pb.TransitionDocumentsRequest, context: aio.ServicerContext
    ) -> pb.TransitionDocumentsResponse:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "to_stage: not today")
        raise AssertionError("unreachable")

    async def StreamLeases(
        self, requests: AsyncIterator[pb.StreamLeasesRequest], context: aio.ServicerContext
    ) -> AsyncIterator[Encoded]:
        async for request in requests:
            yield Encoded(LEASES.SerializeToString()[: 2 + LEASES.leases[0].ByteSize()])
            if request.WhichOneof("kind") == "credit":
                return


async def test_encoded_and_message_responses_reach_the_client() -> None:
    server = aio.server(interceptors=[ServerInterceptor()])
    add_servicer(server, LEASE_SERVICE, _Servicer())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = lease_pb2_grpc.LeaseServiceStub(channel)
            claimed = await stub.ClaimDocuments(pb.ClaimDocumentsRequest(pipeline_id="p"))
            assert claimed == LEASES
            beat = await stub.HeartbeatLeases(
                pb.HeartbeatLeasesRequest(
                    leases=[document_pb2.LeaseRef(document_id="doc-1", fencing_token=2)]
                )
            )
            assert [(r.document_id, r.extended) for r in beat.results] == [("doc-1", True)]
            with pytest.raises(aio.AioRpcError) as failed:
                await stub.TransitionDocuments(pb.TransitionDocumentsRequest(pipeline_id="p"))
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert failed.value.details() == "to_stage: not today"

            async def requests() -> AsyncIterator[pb.StreamLeasesRequest]:
                yield pb.StreamLeasesRequest(open=pb.StreamLeasesOpen(pipeline_id="p"))
                yield pb.StreamLeasesRequest(credit=pb.StreamLeasesCredit(documents=1))

            streamed = [response async for response in stub.StreamLeases(requests())]
            assert [[lease.document_id for lease in r.leases] for r in streamed] == [["doc-0"], ["doc-0"]]
    finally:
        await server.stop(None)


def test_serialize_passes_encoded_bytes_through() -> None:
    data = LEASES.SerializeToString()
    assert serialize(Encoded(data)) is data
    assert serialize(LEASES) == data


def test_a_servicer_missing_a_method_is_refused() -> None:
    class Partial:
        async def ClaimDocuments(self, request: object, context: object) -> None:
            return None

    with pytest.raises(TypeError, match="HeartbeatLeases"):
        method_handlers(LEASE_SERVICE, Partial())


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_a_varint_is_what_protobuf_writes(value: int) -> None:
    # field 1 of a uint64 wrapper: its tag (0x08), then the value's varint
    from google.protobuf import wrappers_pb2

    message = wrappers_pb2.UInt64Value(value=value).SerializeToString()
    assert varint(value) == (message[1:] if value else b"\x00")


def test_a_negative_varint_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        varint(-1)
