"""``hevlayer.client.staging.enqueue_request``: the columnar EnqueueDocumentsRequest the client
sends (document_ids, and content_hashes / priorities only when some entry has one)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from grpc import aio

from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client.errors import FailedPrecondition
from hevlayer.client.staging import EnqueueEntry, StagingClient, enqueue_request


def test_ids_only_leave_the_other_columns_empty() -> None:
    request = enqueue_request("p", [("a", ""), ("b", "", 0)], stage="extract", skip_unchanged=True)
    assert request == staging_pb2.EnqueueDocumentsRequest(
        pipeline_id="p", stage="extract", skip_unchanged=True, document_ids=["a", "b"]
    )
    assert not request.documents


def test_hashes_and_priorities_are_aligned_by_position() -> None:
    batch: list[EnqueueEntry] = [("a", "ha"), ("b", "", -3), ("c", "hc", 7)]
    request = enqueue_request("p", batch, stage="", skip_unchanged=False)
    assert list(request.document_ids) == ["a", "b", "c"]
    assert list(request.content_hashes) == ["ha", "", "hc"]
    assert list(request.priorities) == [0, -3, 7]


def test_an_empty_batch_is_an_empty_message() -> None:
    request = enqueue_request("p", [], stage="", skip_unchanged=False)
    assert request == staging_pb2.EnqueueDocumentsRequest(pipeline_id="p")


class ServerBeforeColumns(staging_pb2_grpc.StagingServiceServicer):
    """EnqueueDocuments as a server that predates ``document_ids`` answers it: the field is
    unknown to it (protobuf drops it without a word), so it counts the ``documents`` only."""

    async def EnqueueDocuments(
        self, request_iterator: AsyncIterator[staging_pb2.EnqueueDocumentsRequest], context: object
    ) -> staging_pb2.EnqueueDocumentsResponse:
        enqueued = 0
        async for request in request_iterator:
            old = staging_pb2.EnqueueDocumentsRequest.FromString(request.SerializeToString())
            old.ClearField("document_ids")
            old.ClearField("content_hashes")
            old.ClearField("priorities")
            enqueued += len(old.documents)
        return staging_pb2.EnqueueDocumentsResponse(enqueued=enqueued)


async def _batches(*batches: list[EnqueueEntry]) -> AsyncIterator[list[EnqueueEntry]]:
    for batch in batches:
        yield batch


async def test_a_server_that_ignores_the_columns_is_an_error_not_a_silent_loss() -> None:
    server = aio.server()
    staging_pb2_grpc.add_StagingServiceServicer_to_server(ServerBeforeColumns(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = StagingClient(channel)
            with pytest.raises(
                FailedPrecondition, match="document_ids: the server enqueued none of the 3 ids"
            ):
                await client.enqueue(
                    "p", _batches([("a", "")], [("b", ""), ("c", "h")]), stage="", skip_unchanged=False
                )
            # nothing sent, nothing expected: not an error
            empty = await client.enqueue("p", _batches(), stage="", skip_unchanged=False)
            assert empty.enqueued == 0
    finally:
        await server.stop(None)
