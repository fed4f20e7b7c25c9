"""EnqueueIds in the columnar form (``EnqueueDocumentsRequest.document_ids`` with its
``content_hashes`` and ``priorities`` columns) through a real claimer process: both queue
backends, a message mixing both forms, and INVALID_ARGUMENT naming the column entry with
nothing of the refused message enqueued."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from grpc import aio
from hypothesis import given
from hypothesis import strategies as hyp
from support.claimer_grpc import new_pipeline
from support.rpc_errors import violations

from hevlayer.api.claimer.v1 import document_state_pb2 as dpb
from hevlayer.api.claimer.v1 import document_state_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2 as lpb
from hevlayer.api.lease.v1 import lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2 as ppb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2 as st
from hevlayer.claimer import validation as v
from hevlayer.claimer.documents import EnqueueBatch, check_enqueue_batch
from hevlayer.common.errors import InvalidArgument

BACKENDS = [ppb.QUEUE_BACKEND_ROW, ppb.QUEUE_BACKEND_SEGMENT]


async def enqueue(
    channel: aio.Channel, batches: Sequence[st.EnqueueDocumentsRequest]
) -> st.EnqueueDocumentsResponse:
    async def messages() -> AsyncIterator[dpb.EnqueueIdsRequest]:
        for batch in batches:
            yield dpb.EnqueueIdsRequest(batch=batch)

    response = await document_state_pb2_grpc.DocumentStateServiceStub(channel).EnqueueIds(messages())
    result: st.EnqueueDocumentsResponse = response.result
    return result


async def claim_all(channel: aio.Channel, pid: str, limit: int = 1000) -> lpb.LeaseColumns:
    """One claim of up to ``limit`` pending ids, in the columnar layout (a claim of document
    rows answers them in no particular order)."""
    response = await lease_pb2_grpc.LeaseServiceStub(channel).ClaimDocuments(
        lpb.ClaimDocumentsRequest(
            pipeline_id=pid,
            stage="pending",
            claim_stage="embedding",
            limit=limit,
            worker_id="w",
            layout=lpb.LEASE_LAYOUT_COLUMNS,
        )
    )
    columns: lpb.LeaseColumns = response.lease_columns
    return columns


async def pending(channel: aio.Channel, pid: str) -> int:
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    got = await stub.GetPipelineStatus(ppb.GetPipelineStatusRequest(pipeline_id=pid))
    return int(got.status.pending_count)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_columns_enqueue_with_hashes_and_priorities(channel: aio.Channel, backend: int) -> None:
    pid = await new_pipeline(channel, backend)
    ids = [f"col-{i:02d}" for i in range(25)]
    hashes = [f"h{i}" if i % 3 else "" for i in range(25)]
    # ids 20..24 first (priority -1), then the rest in enqueue order
    priorities = [-1 if i >= 20 else 0 for i in range(25)]
    result = await enqueue(
        channel,
        [
            st.EnqueueDocumentsRequest(
                pipeline_id=pid,
                document_ids=ids[start : start + 8],
                content_hashes=hashes[start : start + 8],
                priorities=priorities[start : start + 8],
            )
            for start in range(0, 25, 8)
        ],
    )
    assert result.enqueued == 25
    first = await claim_all(channel, pid, 5)
    rest = await claim_all(channel, pid)
    assert set(first.document_ids) == set(ids[20:])  # priority -1 first
    assert sorted(rest.document_ids) == ids[:20]
    got = dict(zip(first.document_ids, first.content_hashes, strict=True))
    got.update(zip(rest.document_ids, rest.content_hashes, strict=True))
    assert got == dict(zip(ids, hashes, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_one_message_may_carry_both_forms(channel: aio.Channel, backend: int) -> None:
    pid = await new_pipeline(channel, backend)
    result = await enqueue(
        channel,
        [
            st.EnqueueDocumentsRequest(
                pipeline_id=pid,
                documents=[st.EnqueuedDocument(document_id="msg-a", content_hash="ha", priority=2)],
                document_ids=["col-b", "col-c"],
                content_hashes=["hb", ""],
            )
        ],
    )
    assert result.enqueued == 3
    # the column's ids have priority 0 (no priorities column): before msg-a's 2
    first = await claim_all(channel, pid, 2)
    assert dict(zip(first.document_ids, first.content_hashes, strict=True)) == {"col-b": "hb", "col-c": ""}
    last = await claim_all(channel, pid)
    assert (list(last.document_ids), list(last.content_hashes)) == (["msg-a"], ["ha"])


def request(pid: str, **fields: object) -> st.EnqueueDocumentsRequest:
    return st.EnqueueDocumentsRequest(pipeline_id=pid, **fields)  # type: ignore[arg-type]


REFUSED: list[tuple[dict[str, object], str]] = [
    ({"document_ids": ["ok", ""]}, "document_ids[1]"),
    ({"document_ids": ["ok", "a\x00b"]}, "document_ids[1]"),
    ({"document_ids": ["ok", "x" * 513]}, "document_ids[1]"),
    ({"document_ids": ["ok", "é" * 257]}, "document_ids[1]"),  # 257 characters, 514 bytes
    ({"document_ids": ["a", "b"], "content_hashes": ["h"]}, "content_hashes"),
    ({"document_ids": ["a", "b"], "priorities": [1, 2, 3]}, "priorities"),
    ({"document_ids": ["a", "b"], "content_hashes": ["", "h" * 257]}, "content_hashes[1]"),
    ({"documents": [st.EnqueuedDocument(document_id="a")], "document_ids": ["b", ""]}, "document_ids[1]"),
    ({"documents": [st.EnqueuedDocument(document_id="")], "document_ids": ["b"]}, "documents[0]"),
    (
        {"documents": [st.EnqueuedDocument(document_id="a", content_hash="h" * 257)], "document_ids": ["b"]},
        "documents[0].content_hash",
    ),
    ({"document_ids": ["a"] * 100_001}, "document_ids"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("fields", "field"), REFUSED)
async def test_invalid_columns_name_the_field_and_enqueue_nothing(
    channel: aio.Channel, backend: int, fields: dict[str, object], field: str
) -> None:
    pid = await new_pipeline(channel, backend)
    with pytest.raises(aio.AioRpcError) as caught:
        await enqueue(channel, [request(pid, **fields)])
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == [field]
    assert await pending(channel, pid) == 0


async def test_segment_stream_refused_midway_enqueues_no_partial_segment(channel: aio.Channel) -> None:
    """A valid message whose ids fill no segment (size 10 here), then an invalid one: the
    buffered ids are never written."""
    pid = await new_pipeline(channel, ppb.QUEUE_BACKEND_SEGMENT)
    with pytest.raises(aio.AioRpcError) as caught:
        await enqueue(
            channel,
            [
                request(pid, document_ids=[f"ok-{i}" for i in range(5)]),
                request(pid, document_ids=["fine", ""]),
            ],
        )
    assert violations(caught.value) == ["document_ids[1]"]
    assert await pending(channel, pid) == 0
    assert list((await claim_all(channel, pid)).document_ids) == []


def first_problem(batch: EnqueueBatch) -> str | None:
    """The field the per-id rules refuse first (ids before hashes), None if none: the
    reference :func:`check_enqueue_batch` must agree with."""
    for i, value in enumerate(batch.document_ids):
        try:
            v.document_id(value, batch.id_field(i))
        except InvalidArgument as error:
            return error.violations[0].field
    for i, content_hash in enumerate(batch.content_hashes):
        if len(content_hash.encode()) > v.MAX_HASH_BYTES:
            return batch.hash_field(i)
    return None


_TEXT = hyp.text(alphabet="a\x00é€", max_size=200)


@given(
    ids=hyp.lists(hyp.one_of(hyp.text(alphabet="ab", min_size=1, max_size=20), _TEXT), max_size=30),
    hashes=hyp.lists(_TEXT, max_size=30),
    from_documents=hyp.integers(min_value=0, max_value=30),
)
def test_check_enqueue_batch_agrees_with_the_per_id_rules(
    ids: list[str], hashes: list[str], from_documents: int
) -> None:
    """Whatever the ids and hashes (empty, NUL, multi-byte, over the byte limits), the C-level
    passes refuse exactly what the per-id rules refuse, naming the same field."""
    start = min(from_documents, len(ids))
    batch = EnqueueBatch(
        "p", ids, (hashes + [""] * len(ids))[: len(ids)], columns_from=start if start < len(ids) else None
    )
    expected = first_problem(batch)
    if expected is None:
        check_enqueue_batch(batch)
    else:
        with pytest.raises(InvalidArgument) as caught:
            check_enqueue_batch(batch)
        assert caught.value.violations[0].field == expected
