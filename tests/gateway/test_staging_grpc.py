"""StagingService end to end: client -> gateway -> claimer -> PostgreSQL, chunks
in a real SeaweedFS, a disk cache; every hop a real process."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from support.leases import claim, read_chunks
from support.pipelines import create_pipeline, unique
from support.rpc_errors import violations
from support.s3 import pack_keys
from support.service_http import metric_samples
from support.stacks import GatewayStack
from support.staging import document, get_document, stage

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2 as st
from hevlayer.api.staging.v1 import staging_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.devstack.testing import claimer_metadata
from hevlayer.gateway.chunkstore import read_pack_index

STAGED = st.STAGE_OUTCOME_STAGED
REJECTED = st.STAGE_OUTCOME_REJECTED
UNCHANGED = st.STAGE_OUTCOME_UNCHANGED


def _pack(stack: GatewayStack, key: str) -> bytes:
    status, body = stack.s3.request("GET", f"/{stack.bucket}/{key}")
    assert status == 200, body[:200]
    return body


async def test_stage_then_read_back_in_order(channel: aio.Channel, gateway_stack: GatewayStack) -> None:
    pid = await create_pipeline(channel)
    docs = [document(f"doc-{i}", chunks=4) for i in range(3)]
    docs[1].chunks[2].metadata.update({"nested": {"a": [1, "b", True, None]}, "ratio": 0.5})
    results = await stage(channel, pid, docs)
    assert [r.outcome for r in results] == [STAGED] * 3
    assert [r.chunk_count for r in results] == [4, 4, 4]
    assert len({r.fencing_token for r in results}) == 3

    # One batch, one pack object with an index of its documents.
    keys = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    assert len(keys) == 1
    assert [doc_id for doc_id, _, _ in read_pack_index(_pack(gateway_stack, keys[0]))] == [d.id for d in docs]

    leases = await claim(channel, pid)
    assert set(leases) == {d.id for d in docs}
    ordered = {d.id: leases[d.id] for d in reversed(docs)}
    responses = await read_chunks(channel, pid, ordered)
    assert [r.document_id for r in responses] == [d.id for d in reversed(docs)]
    for response, doc in zip(responses, reversed(docs), strict=True):
        assert response.end_of_document
        assert not response.HasField("error")
        assert list(response.chunks) == list(doc.chunks)


async def test_restaging_replaces_the_backing_and_orphans_nothing(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    pid = await create_pipeline(channel)
    a, b = document("a", text="first"), document("b", text="first")
    first = await stage(channel, pid, [a, b])
    [p1] = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)

    a2 = document("a", chunks=2, text="second")
    [restaged] = await stage(channel, pid, [a2])
    assert restaged.outcome == STAGED
    assert restaged.fencing_token > first[0].fencing_token
    keys = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    assert len(keys) == 2
    assert p1 in keys

    b2 = document("b", chunks=1, text="second")
    await stage(channel, pid, [b2])
    keys = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    assert p1 not in keys
    assert len(keys) == 2

    leases = await claim(channel, pid)
    responses = await read_chunks(channel, pid, leases)
    by_id = {r.document_id: list(r.chunks) for r in responses}
    assert by_id == {"a": list(a2.chunks), "b": list(b2.chunks)}
    state = await get_document(channel, pid, "a")
    assert state.chunk_count == 2

    staging = staging_pb2_grpc.StagingServiceStub(channel)
    deleted = await staging.DeleteDocuments(
        st.DeleteDocumentsRequest(pipeline_id=pid, document_ids=["a", "b", "x"])
    )
    assert deleted.deleted == 2
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == []


async def test_invalid_documents_are_rejected_alone_and_write_nothing(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    pid = await create_pipeline(channel)
    good = document("good")
    duplicate_chunk = document("dup-chunk")
    duplicate_chunk.chunks[2].id = duplicate_chunk.chunks[0].id
    long_text = document("long-text")
    long_text.chunks[1].text = "x" * 70_000
    no_id = document("")
    big_metadata = document("big-meta")
    big_metadata.chunks[0].metadata.update({"blob": "y" * 20_000})
    no_chunk_id = document("no-chunk-id")
    no_chunk_id.chunks[1].id = ""
    batch = [good, duplicate_chunk, long_text, no_id, big_metadata, no_chunk_id, document("good")]
    results = await stage(channel, pid, batch)
    assert [r.outcome for r in results] == [STAGED] + [REJECTED] * 6
    fields = [[v.field for v in r.error.field_violations] for r in results[1:]]
    assert fields == [
        ["documents[1].chunks[2].id"],
        ["documents[2].chunks[1].text"],
        ["documents[3].id"],
        ["documents[4].chunks[0].metadata"],
        ["documents[5].chunks[1].id"],
        ["documents[6].id"],
    ]
    assert all(r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for r in results[1:])
    assert "documents[1].chunks[2].id" in results[1].error.message

    [key] = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    assert [doc_id for doc_id, _, _ in read_pack_index(_pack(gateway_stack, key))] == ["good"]
    for rejected in ("dup-chunk", "long-text", "big-meta", "no-chunk-id"):
        with pytest.raises(aio.AioRpcError) as caught:
            await get_document(channel, pid, rejected)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    # A batch of invalid documents only writes no object at all.
    results = await stage(channel, pid, [duplicate_chunk, no_id])
    assert [r.outcome for r in results] == [REJECTED, REJECTED]
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == [key]


async def test_skip_unchanged_writes_nothing(channel: aio.Channel, gateway_stack: GatewayStack) -> None:
    pid = await create_pipeline(channel)
    doc = document("same")
    [first] = await stage(channel, pid, [doc], skip_unchanged=True)
    keys = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    [again] = await stage(channel, pid, [doc], skip_unchanged=True)
    assert again.outcome == UNCHANGED
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == keys
    changed = document("same", text="changed")
    third, new = await stage(channel, pid, [changed, document("new")], skip_unchanged=True)
    assert new.outcome == STAGED
    assert third.outcome == STAGED
    assert third.fencing_token > first.fencing_token
    # Without skip_unchanged the same content is staged again (new token).
    [fourth] = await stage(channel, pid, [changed])
    assert fourth.outcome == STAGED
    assert fourth.fencing_token > third.fencing_token


async def test_read_chunks_checks_leases(channel: aio.Channel, gateway_stack: GatewayStack) -> None:
    pid = await create_pipeline(channel)
    await stage(channel, pid, [document("held"), document("other")])
    leases = await claim(channel, pid, limit=1)
    [held] = leases
    unheld = "other" if held == "held" else "held"
    responses = await read_chunks(channel, pid, {held: leases[held], unheld: 1, "missing": 1})
    by_id = {r.document_id: r for r in responses}
    assert by_id[unheld].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert by_id["missing"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert by_id[held].end_of_document
    assert len(by_id[held].chunks) == 3
    stale = await read_chunks(channel, pid, {held: leases[held] + 1000})
    assert stale[0].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert not stale[0].chunks
    wrong_worker = await read_chunks(channel, pid, leases, worker="someone-else")
    assert wrong_worker[0].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "someone-else" in wrong_worker[0].error.message

    staging = staging_pb2_grpc.StagingServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in staging.ReadChunks(st.ReadChunksRequest(pipeline_id=pid, stage="embedding")):
            pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["worker_id"]


async def test_reads_survive_a_lost_cache(channel: aio.Channel, gateway_stack: GatewayStack) -> None:
    pid = await create_pipeline(channel)
    docs = [document(f"d{i}") for i in range(5)]
    await stage(channel, pid, docs)
    leases = await claim(channel, pid)
    warm = await read_chunks(channel, pid, leases)
    hits_before = sum(
        v
        for labels, v in metric_samples(
            gateway_stack.gateway_http, "hevlayer_gateway_chunk_cache_lookups_total"
        )
        if labels["result"] == "hit"
    )
    again = await read_chunks(channel, pid, leases)
    hits_after = sum(
        v
        for labels, v in metric_samples(
            gateway_stack.gateway_http, "hevlayer_gateway_chunk_cache_lookups_total"
        )
        if labels["result"] == "hit"
    )
    assert hits_after - hits_before == len(docs)
    assert [list(r.chunks) for r in again] == [list(r.chunks) for r in warm]
    ratio = metric_samples(gateway_stack.gateway_http, "hevlayer_gateway_chunk_cache_hit_ratio")
    assert ratio
    assert 0 < ratio[0][1] <= 1

    # The cache's files vanish: reads go to S3 and still succeed.
    shutil.rmtree(gateway_stack.tmp / "cache")
    cold = await read_chunks(channel, pid, leases)
    assert [list(r.chunks) for r in cold] == [list(d.chunks) for d in docs if d.id in leases]


async def test_get_list_and_enqueue(channel: aio.Channel, gateway_stack: GatewayStack) -> None:
    pid = await create_pipeline(channel, queue_backend=pipeline_pb2.QUEUE_BACKEND_ROW)
    await stage(channel, pid, [document("b-1"), document("a-1"), document("a-2")])
    staging = staging_pb2_grpc.StagingServiceStub(channel)

    async def enqueue_requests() -> AsyncIterator[st.EnqueueDocumentsRequest]:
        yield st.EnqueueDocumentsRequest(
            pipeline_id=pid, documents=[st.EnqueuedDocument(document_id="light-1")]
        )
        yield st.EnqueueDocumentsRequest(
            pipeline_id=pid, documents=[st.EnqueuedDocument(document_id="light-2")]
        )

    enqueued = await staging.EnqueueDocuments(enqueue_requests())
    assert enqueued.enqueued == 2

    listed = [
        d async for r in staging.ListDocuments(st.ListDocumentsRequest(pipeline_id=pid)) for d in r.documents
    ]
    assert [d.document_id for d in listed] == ["a-1", "a-2", "b-1", "light-1", "light-2"]
    prefixed = [
        d.document_id
        async for r in staging.ListDocuments(st.ListDocumentsRequest(pipeline_id=pid, id_prefix="a-"))
        for d in r.documents
    ]
    assert prefixed == ["a-1", "a-2"]
    state = await get_document(channel, pid, "a-1")
    assert state.stage == "pending"
    assert state.chunk_count == 3
    assert state.content_hash.startswith("sha256:")

    # A lightweight id has no chunks: reading it yields an empty document.
    leases = await claim(channel, pid, limit=10)
    responses = await read_chunks(channel, pid, {"light-1": leases["light-1"]})
    assert responses[0].end_of_document
    assert not responses[0].chunks
    assert not responses[0].HasField("error")

    async def mixed() -> AsyncIterator[st.EnqueueDocumentsRequest]:
        yield st.EnqueueDocumentsRequest(pipeline_id=pid, documents=[st.EnqueuedDocument(document_id="x")])
        yield st.EnqueueDocumentsRequest(
            pipeline_id="other", documents=[st.EnqueuedDocument(document_id="y")]
        )

    with pytest.raises(aio.AioRpcError) as caught:
        await staging.EnqueueDocuments(mixed())
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["pipeline_id"]


async def test_unknown_pipeline_is_not_found_and_writes_nothing(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    pid = unique()
    with pytest.raises(aio.AioRpcError) as caught:
        await stage(channel, pid, [document("d")])
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == []


async def test_a_refused_record_deletes_its_pack(channel: aio.Channel, gateway_stack: GatewayStack) -> None:
    """The gateway still believes the pipeline exists (its cache), writes the pack,
    and the claimer refuses RecordStaged: the pack is deleted."""
    pid = await create_pipeline(channel)
    await stage(channel, pid, [document("first")])
    [kept] = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    # Delete the pipeline behind the gateway's back, straight at the claimer.
    direct = open_channel(gateway_stack.claimer_address, metadata=claimer_metadata())
    try:
        await pipeline_pb2_grpc.PipelineServiceStub(direct).DeletePipeline(
            pipeline_pb2.DeletePipelineRequest(pipeline_id=pid)
        )
    finally:
        await direct.close()
    with pytest.raises(aio.AioRpcError) as caught:
        await stage(channel, pid, [document("second")])
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == [kept]


async def test_delete_pipeline_through_the_gateway_deletes_its_packs(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    pid = await create_pipeline(channel)
    await stage(channel, pid, [document("a")], [document("b")])
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    await stub.DeletePipeline(pipeline_pb2.DeletePipelineRequest(pipeline_id=pid))
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == []
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.DeletePipeline(pipeline_pb2.DeletePipelineRequest(pipeline_id=pid))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_concurrent_streams_share_packs(channel: aio.Channel, gateway_stack: GatewayStack) -> None:
    import asyncio

    pid = await create_pipeline(channel)
    run = uuid.uuid4().hex[:6]
    batches = [
        [document(f"{run}-{s}-{b}-{i}", chunks=2) for i in range(5)] for s in range(4) for b in range(5)
    ]
    results = await asyncio.gather(*(stage(channel, pid, *batches[s * 5 : s * 5 + 5]) for s in range(4)))
    assert all(r.outcome == STAGED for rs in results for r in rs)
    keys = pack_keys(gateway_stack.s3, gateway_stack.bucket, pid)
    assert 1 <= len(keys) <= 20
    indexed = sorted(doc_id for key in keys for doc_id, _, _ in read_pack_index(_pack(gateway_stack, key)))
    assert indexed == sorted(d.id for batch in batches for d in batch)


def test_documents_proto_paths_match_the_api() -> None:
    """The field paths the gateway reports name real fields of the request."""
    request = st.StageDocumentsRequest()
    assert "documents" in request.DESCRIPTOR.fields_by_name
    assert {"id", "chunks", "content_hash"} <= set(document_pb2.Document.DESCRIPTOR.fields_by_name)
    assert {"id", "text", "metadata"} <= set(document_pb2.Chunk.DESCRIPTOR.fields_by_name)


async def test_staging_with_leases_ends_segment_claims(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    """A CPU worker's loop over the segmented queue: enqueue ids into ``extract``,
    claim them, stage their chunks with the claims' tokens; every id is counted
    once (pending), none is left in the claim stage or claimed again."""
    pid = await create_pipeline(channel, queue_backend=pipeline_pb2.QUEUE_BACKEND_SEGMENT)
    staging = staging_pb2_grpc.StagingServiceStub(channel)
    leases_stub = lease_pb2_grpc.LeaseServiceStub(channel)
    pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)
    ids = [f"obj-{i}" for i in range(5)]

    async def enqueue() -> AsyncIterator[st.EnqueueDocumentsRequest]:
        yield st.EnqueueDocumentsRequest(
            pipeline_id=pid, stage="extract", documents=[st.EnqueuedDocument(document_id=d) for d in ids]
        )

    assert (await staging.EnqueueDocuments(enqueue())).enqueued == 5
    claimed = await leases_stub.ClaimDocuments(
        lease_pb2.ClaimDocumentsRequest(
            pipeline_id=pid, stage="extract", claim_stage="extracting", limit=10, worker_id="cpu-1"
        )
    )
    tokens = {lease.document_id: lease.fencing_token for lease in claimed.leases}
    assert sorted(tokens) == ids

    async def one(request: st.StageDocumentsRequest) -> list[st.StageResult]:
        async def requests() -> AsyncIterator[st.StageDocumentsRequest]:
            yield request

        results: list[st.StageResult] = []
        async for response in staging.StageDocuments(requests()):
            results.extend(response.results)
        return results

    def refs(pairs: list[tuple[str, int]]) -> list[document_pb2.LeaseRef]:
        return [document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in pairs]

    # a lease naming a document outside the message, twice, or with no token: nothing is staged
    for bad, field in (
        ([("elsewhere", 7)], "leases[0].document_id"),
        ([(ids[0], tokens[ids[0]]), (ids[0], tokens[ids[0]])], "leases[1].document_id"),
        ([(ids[0], 0)], "leases[0].fencing_token"),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await one(
                st.StageDocumentsRequest(pipeline_id=pid, documents=[document(ids[0])], leases=refs(bad))
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == [field]
    assert pack_keys(gateway_stack.s3, gateway_stack.bucket, pid) == []

    docs = [document(d) for d in ids]
    docs[4].chunks.add(id=docs[4].chunks[0].id, text="a duplicate chunk id: this document is rejected")
    results = await one(
        st.StageDocumentsRequest(pipeline_id=pid, documents=docs, leases=refs(sorted(tokens.items())))
    )
    assert [r.outcome for r in results] == [STAGED] * 4 + [REJECTED]
    status = await pipelines.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest(pipeline_id=pid))
    counts = {stage: n for stage, n in status.status.counts.items() if n}
    # the rejected document keeps its claim (its worker fails or releases it)
    assert counts == {"pending": 4, "extracting": 1}
    embedding = await claim(channel, pid, limit=100)
    assert sorted(embedding) == ids[:4]
