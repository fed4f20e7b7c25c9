"""``hevlayer.client.staging.enqueue_request``: the columnar EnqueueDocumentsRequest the client
sends (document_ids, and content_hashes / priorities only when some entry has one)."""

from __future__ import annotations

from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client.staging import EnqueueEntry, enqueue_request


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
