"""hevlayer.client.LeasesClient against a server that predates the columnar lease layout.

The client sends heartbeats and transitions as LeaseRefColumns and asks for
LeaseColumns. A server from before the columnar layout (here: a LeaseService
that reads only the per-document fields, as the old generated code would, the
new fields being unknown to it) sees an empty batch and answers without
columns: the client must notice, send the same call again with per-document
messages, and stay with them. The gateway's transitions to the claimer go
through the same client (``ClaimerClient.transition``). Through a real server
and a real channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf import timestamp_pb2
from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2 as pb
from hevlayer.api.lease.v1 import lease_pb2_grpc
from hevlayer.client import Claim, LeaseRef, LeasesClient, TransitionOutcome
from hevlayer.client.channel import open_channel
from hevlayer.gateway.claimer_client import ClaimerClient


class OldLeaseService(lease_pb2_grpc.LeaseServiceServicer):
    """LeaseService as it was before the columnar layout: one message per document."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int]] = []
        """(method, documents seen) per call."""

    async def ClaimDocuments(
        self, request: pb.ClaimDocumentsRequest, context: aio.ServicerContext
    ) -> pb.ClaimDocumentsResponse:
        self.batches.append(("claim", request.limit))
        return pb.ClaimDocumentsResponse(
            leases=[
                document_pb2.Lease(
                    document_id=f"doc-{n}",
                    stage=request.claim_stage,
                    worker_id=request.worker_id,
                    fencing_token=100 + n,
                    attempts=1,
                    chunk_count=3,
                    expires_at=timestamp_pb2.Timestamp(seconds=4_000_000_000),
                )
                for n in range(request.limit)
            ]
        )

    async def HeartbeatLeases(
        self, request: pb.HeartbeatLeasesRequest, context: aio.ServicerContext
    ) -> pb.HeartbeatLeasesResponse:
        self.batches.append(("heartbeat", len(request.leases)))
        return pb.HeartbeatLeasesResponse(
            results=[
                pb.HeartbeatResult(
                    document_id=ref.document_id,
                    extended=ref.fencing_token != 0,
                    expires_at=timestamp_pb2.Timestamp(seconds=4_000_000_000) if ref.fencing_token else None,
                )
                for ref in request.leases
            ]
        )

    async def TransitionDocuments(
        self, request: pb.TransitionDocumentsRequest, context: aio.ServicerContext
    ) -> pb.TransitionDocumentsResponse:
        self.batches.append(("transition", len(request.documents)))
        return pb.TransitionDocumentsResponse(
            results=[
                pb.TransitionResult(
                    document_id=ref.document_id,
                    outcome=pb.TRANSITION_OUTCOME_MOVED
                    if ref.fencing_token
                    else pb.TRANSITION_OUTCOME_NOT_HELD,
                    fencing_token=ref.fencing_token + 1,
                )
                for ref in request.documents
            ]
        )

    async def StreamLeases(
        self, request_iterator: AsyncIterator[pb.StreamLeasesRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.StreamLeasesResponse]:
        async for _ in request_iterator:
            yield pb.StreamLeasesResponse(
                leases=[document_pb2.Lease(document_id="streamed", fencing_token=9)]
            )


async def _serve(servicer: OldLeaseService) -> tuple[aio.Server, str]:
    server = aio.server()
    lease_pb2_grpc.add_LeaseServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_the_client_falls_back_to_messages_and_stays_there() -> None:
    servicer = OldLeaseService()
    server, address = await _serve(servicer)
    channel = open_channel(address)
    client = LeasesClient(channel)
    claim = Claim("p", "gpu-0", "pending", "embedding")
    try:
        leases = await client.claim(claim, 2)  # LeaseLayout is ignored: leases come as messages
        assert [(x.document_id, x.fencing_token, x.attempts, x.chunk_count) for x in leases] == [
            ("doc-0", 100, 1, 3),
            ("doc-1", 101, 1, 3),
        ]
        streamed = [batch async for batch in client.stream_leases(claim, _no_credits(), 1)]
        assert [[x.document_id for x in batch] for batch in streamed] == [["streamed"]]
        documents = [LeaseRef("doc-0", 100), LeaseRef("doc-1", 0)]
        assert client.layout.columns
        moves = await client.transition_claimed(claim, documents, "indexed")
        assert [m.outcome for m in moves] == [TransitionOutcome.MOVED, TransitionOutcome.NOT_HELD]
        assert not client.layout.columns
        assert servicer.batches[-2:] == [("transition", 0), ("transition", 2)]
        deadlines = await client.heartbeat(claim, documents)
        assert deadlines[0] is not None
        assert deadlines[1] is None
        assert servicer.batches[-1] == ("heartbeat", 2)  # straight to messages now
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_heartbeat_falls_back_to_messages() -> None:
    servicer = OldLeaseService()
    server, address = await _serve(servicer)
    channel = open_channel(address)
    client = LeasesClient(channel)
    try:
        deadlines = await client.heartbeat(Claim("p", "gpu-0", "pending", "embedding"), [LeaseRef("a", 5)])
        assert len(deadlines) == 1
        assert deadlines[0] is not None
        assert servicer.batches == [("heartbeat", 0), ("heartbeat", 1)]
        assert not client.layout.columns
    finally:
        await channel.close()
        await server.stop(None)


async def test_the_gateways_transitions_fall_back_too() -> None:
    servicer = OldLeaseService()
    server, address = await _serve(servicer)
    client = ClaimerClient(aio.insecure_channel(address))
    try:
        for _ in range(2):
            moves = await client.transition(
                "p", [("a", 5), ("b", 0)], from_stage="embedding", worker_id="gw", to_stage="indexed"
            )
            assert [(m.document_id, m.moved, m.fencing_token) for m in moves] == [
                ("a", True, 6),
                ("b", False, 1),
            ]
        assert servicer.batches == [("transition", 0), ("transition", 2), ("transition", 2)]
    finally:
        await client.channel.close()
        await server.stop(None)


async def _no_credits() -> AsyncIterator[int]:
    credits: tuple[int, ...] = ()
    for granted in credits:
        yield granted
