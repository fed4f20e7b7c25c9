"""IndexService end to end: WriteVectors into a real Milvus Lite with lease and
fencing checks by the real claimer, sink failures, and Query by vector and by
text (embedded by the live suite's real embedder, all-MiniLM-L6-v2: the vectors
written are that model's, so a text query finds the chunk of that text)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from support.leases import claim
from support.pipelines import create_pipeline
from support.rpc_errors import violations
from support.stacks import unreachable_turbopuffer
from support.staging import document, get_document, stage
from support.vectors import model_vectors

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2 as ix
from hevlayer.api.index.v1 import index_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.devstack.testing import LiveSuite

DIM = 384
"""The dimension of the live suite's model (all-MiniLM-L6-v2)."""


@pytest.fixture(scope="module")
def embedder_address(live_suite: LiveSuite) -> str:
    """The live suite's embedder: the gateway embeds text queries with it, the tests their chunks."""
    return live_suite.services["embedder"]


@pytest.fixture(scope="module")
def gateway_env(embedder_address: str) -> dict[str, str]:
    """The gateway embeds with the live suite's embedder; its Turbopuffer sink cannot be reached."""
    return {
        "EMBEDDER_ADDRESS": embedder_address,
        **unreachable_turbopuffer(),
    }


class ChunkVectors:
    """The live suite's model's vectors: ``await vectors_of(doc)`` gives each chunk's, with
    attributes text, page and lang (padded with 0.5 to a larger ``dim``); ``await
    vectors_of.text(t)`` one text's."""

    def __init__(self, embedder_address: str) -> None:
        self.embedder_address = embedder_address

    async def __call__(self, doc: document_pb2.Document, *, dim: int = DIM) -> list[document_pb2.Vector]:
        values = await model_vectors(self.embedder_address, [chunk.text for chunk in doc.chunks])
        out = []
        for chunk, chunk_values in zip(doc.chunks, values, strict=True):
            vector = document_pb2.Vector(id=chunk.id, values=chunk_values + [0.5] * max(0, dim - DIM))
            vector.attributes.update({"text": chunk.text, "page": chunk.metadata["page"], "lang": "en"})
            out.append(vector)
        return out

    async def text(self, text: str) -> list[float]:
        return (await model_vectors(self.embedder_address, [text]))[0]


@pytest.fixture(scope="module")
def vectors_of(embedder_address: str) -> ChunkVectors:
    return ChunkVectors(embedder_address)


async def write(
    channel: aio.Channel,
    pipeline_id: str,
    documents: dict[str, tuple[int, list[document_pb2.Vector]]],
    *,
    worker: str = "gpu-worker-0",
    split: int = 2,
) -> list[ix.WriteResult]:
    """WriteVectors: each document's vectors over messages of ``split`` vectors."""
    stub = index_pb2_grpc.IndexServiceStub(channel)

    async def requests() -> AsyncIterator[ix.WriteVectorsRequest]:
        for doc_id, (token, vectors) in documents.items():
            parts = [vectors[i : i + split] for i in range(0, len(vectors), split)] or [[]]
            for index, part in enumerate(parts):
                yield ix.WriteVectorsRequest(
                    pipeline_id=pipeline_id,
                    worker_id=worker,
                    from_stage="embedding",
                    lease=document_pb2.LeaseRef(document_id=doc_id, fencing_token=token),
                    vectors=part,
                    end_of_document=index == len(parts) - 1,
                )

    response = await stub.WriteVectors(requests())
    return list(response.results)


async def query(channel: aio.Channel, pipeline_id: str, **kwargs: object) -> list[ix.QueryHit]:
    stub = index_pb2_grpc.IndexServiceStub(channel)
    response = await stub.Query(ix.QueryRequest(pipeline_id=pipeline_id, **kwargs))  # type: ignore[arg-type]
    return list(response.hits)


async def test_write_index_and_query(channel: aio.Channel, vectors_of: ChunkVectors) -> None:
    pid = await create_pipeline(channel)
    docs = [document(f"doc-{i}", chunks=3) for i in range(3)]
    await stage(channel, pid, docs)
    leases = await claim(channel, pid)
    results = await write(channel, pid, {d.id: (leases[d.id], await vectors_of(d)) for d in docs})
    assert [(r.document_id, r.outcome, r.vectors_written) for r in results] == [
        (d.id, ix.WRITE_OUTCOME_INDEXED, 3) for d in docs
    ]
    for doc in docs:
        assert (await get_document(channel, pid, doc.id)).stage == "indexed"

    target = docs[1].chunks[2]
    hits = await query(
        channel, pid, vector=ix.QueryVector(values=await vectors_of.text(target.text)), top_k=3
    )
    assert hits[0].document_id == "doc-1"
    assert hits[0].chunk_id == target.id
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    attributes = dict(hits[0].attributes)
    assert attributes["text"] == target.text
    assert attributes["page"] == 2
    assert attributes["document_id"] == "doc-1"
    assert attributes["chunk_id"] == target.id
    assert len(hits) == 3
    assert hits[0].score >= hits[1].score >= hits[2].score

    filtered = await query(
        channel,
        pid,
        vector=ix.QueryVector(values=await vectors_of.text(target.text)),
        top_k=10,
        filter=_struct({"page": 0}),
    )
    assert {h.chunk_id for h in filtered} == {f"doc-{i}-0" for i in range(3)}

    by_text = await query(channel, pid, text=docs[0].chunks[1].text, top_k=1)
    assert by_text[0].chunk_id == docs[0].chunks[1].id


def _struct(values: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def test_a_stale_writer_writes_nothing(channel: aio.Channel, vectors_of: ChunkVectors) -> None:
    pid = await create_pipeline(channel)
    doc = document("contested")
    await stage(channel, pid, [doc])
    old = await claim(channel, pid)
    # Re-staging bumps the fencing token: the first worker's lease is gone.
    await stage(channel, pid, [document("contested", text="new version")])
    results = await write(channel, pid, {doc.id: (old[doc.id], await vectors_of(doc))})
    assert results[0].outcome == ix.WRITE_OUTCOME_STALE_LEASE
    assert results[0].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert results[0].vectors_written == 0
    assert (
        await query(
            channel, pid, vector=ix.QueryVector(values=await vectors_of.text(doc.chunks[0].text)), top_k=10
        )
        == []
    )
    assert (await get_document(channel, pid, doc.id)).stage == "pending"

    fresh = await claim(channel, pid)
    wrong_worker = await write(
        channel, pid, {doc.id: (fresh[doc.id], await vectors_of(doc))}, worker="intruder"
    )
    assert wrong_worker[0].outcome == ix.WRITE_OUTCOME_STALE_LEASE
    right = await write(channel, pid, {doc.id: (fresh[doc.id], await vectors_of(doc))})
    assert right[0].outcome == ix.WRITE_OUTCOME_INDEXED


async def test_dimension_is_fixed_by_the_first_write(channel: aio.Channel, vectors_of: ChunkVectors) -> None:
    pid = await create_pipeline(channel)
    docs = [document("first"), document("second"), document("third")]
    await stage(channel, pid, docs)
    leases = await claim(channel, pid)
    await write(channel, pid, {"first": (leases["first"], await vectors_of(docs[0]))})
    results = await write(
        channel,
        pid,
        {
            "second": (leases["second"], await vectors_of(docs[1], dim=DIM + 2)),
            "third": (leases["third"], await vectors_of(docs[2])),
        },
    )
    assert [r.outcome for r in results] == [ix.WRITE_OUTCOME_REJECTED, ix.WRITE_OUTCOME_INDEXED]
    assert [v.field for v in results[0].error.field_violations] == ["vectors[0].values"]
    assert (await get_document(channel, pid, "second")).stage == "embedding"

    # the first write recorded the dimension on the pipeline; it is set once
    pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)
    got = await pipelines.GetPipeline(pipeline_pb2.GetPipelineRequest(pipeline_id=pid))
    assert got.pipeline.dimension == DIM
    same = pipeline_pb2.UpdatePipelineRequest(
        pipeline=pipeline_pb2.Pipeline(id=pid, dimension=DIM),
        update_mask=field_mask_pb2.FieldMask(paths=["dimension"]),
    )
    assert (await pipelines.UpdatePipeline(same)).pipeline.dimension == DIM
    other = pipeline_pb2.UpdatePipelineRequest(
        pipeline=pipeline_pb2.Pipeline(id=pid, dimension=DIM + 2),
        update_mask=field_mask_pb2.FieldMask(paths=["dimension"]),
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await pipelines.UpdatePipeline(other)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert violations(caught.value) == ["pipeline.dimension"]

    duplicate = await vectors_of(docs[1])
    duplicate[2].id = duplicate[0].id
    [dup] = await write(channel, pid, {"second": (leases["second"], duplicate)})
    assert dup.outcome == ix.WRITE_OUTCOME_REJECTED
    assert [v.field for v in dup.error.field_violations] == ["vectors[2].id"]


async def test_rewriting_a_document_replaces_its_rows(channel: aio.Channel, vectors_of: ChunkVectors) -> None:
    pid = await create_pipeline(channel)
    doc = document("evolving", chunks=3)
    await stage(channel, pid, [doc])
    leases = await claim(channel, pid)
    await write(channel, pid, {doc.id: (leases[doc.id], await vectors_of(doc))})
    smaller = document("evolving", chunks=1, text="v2")
    await stage(channel, pid, [smaller])
    leases = await claim(channel, pid)
    await write(channel, pid, {doc.id: (leases[doc.id], await vectors_of(smaller))})
    hits = await query(
        channel,
        pid,
        vector=ix.QueryVector(values=await vectors_of.text(doc.chunks[1].text)),
        top_k=10,
        filter=_struct({"document_id": "evolving"}),
    )
    assert [(h.chunk_id, dict(h.attributes)["text"]) for h in hits] == [
        ("evolving-0", smaller.chunks[0].text)
    ]


async def test_a_sink_failure_is_unavailable_and_the_document_can_be_reclaimed(
    channel: aio.Channel, vectors_of: ChunkVectors
) -> None:
    pid = await create_pipeline(channel, sink=pipeline_pb2.SINK_TURBOPUFFER)
    doc = document("unlucky")
    await stage(channel, pid, [doc])
    leases = await claim(channel, pid, lease_seconds=4)
    with pytest.raises(aio.AioRpcError) as caught:
        await write(channel, pid, {doc.id: (leases[doc.id], await vectors_of(doc))})
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    state = await get_document(channel, pid, doc.id)
    assert state.stage == "embedding"
    assert state.fencing_token == leases[doc.id]

    # The lease expires; the next claim gets the document again.
    deadline = time.monotonic() + 30
    again: dict[str, int] = {}
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    while not again and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        response = await stub.ClaimDocuments(
            lease_pb2.ClaimDocumentsRequest(
                pipeline_id=pid, stage="pending", claim_stage="embedding", limit=10, worker_id="gpu-worker-1"
            )
        )
        again = {lease.document_id: lease.attempts for lease in response.leases}
    assert again == {doc.id: 2}


async def test_text_queries_need_an_embedder_and_vectors_a_dimension(channel: aio.Channel) -> None:
    pid = await create_pipeline(channel)
    assert await query(channel, pid, vector=ix.QueryVector(values=[1.0, 0.0, 0.0, 0.0])) == []
    with pytest.raises(aio.AioRpcError) as caught:
        await query(channel, pid, top_k=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as caught:
        await query(channel, pid, text="hello", top_k=5000)
    assert violations(caught.value) == ["top_k"]
    with pytest.raises(aio.AioRpcError) as caught:
        await query(channel, pid, vector=ix.QueryVector(values=[1.0]), filter=_struct({"tags": ["a"]}))
    assert violations(caught.value) == ["filter.tags"]


async def test_malformed_streams(channel: aio.Channel, vectors_of: ChunkVectors) -> None:
    pid = await create_pipeline(channel)
    await stage(channel, pid, [document("x"), document("y")])
    leases = await claim(channel, pid)
    stub = index_pb2_grpc.IndexServiceStub(channel)

    async def interleaved() -> AsyncIterator[ix.WriteVectorsRequest]:
        for doc_id in ("x", "y"):
            yield ix.WriteVectorsRequest(
                pipeline_id=pid,
                worker_id="gpu-worker-0",
                from_stage="embedding",
                lease=document_pb2.LeaseRef(document_id=doc_id, fencing_token=leases[doc_id]),
            )

    with pytest.raises(aio.AioRpcError) as caught:
        await stub.WriteVectors(interleaved())
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["lease.document_id"]

    async def unfinished() -> AsyncIterator[ix.WriteVectorsRequest]:
        yield ix.WriteVectorsRequest(
            pipeline_id=pid,
            worker_id="gpu-worker-0",
            from_stage="embedding",
            lease=document_pb2.LeaseRef(document_id="x", fencing_token=leases["x"]),
            vectors=(await vectors_of(document("x")))[:1],
        )

    response = await stub.WriteVectors(unfinished())
    assert response.results[0].outcome == ix.WRITE_OUTCOME_REJECTED
    assert [v.field for v in response.results[0].error.field_violations] == ["end_of_document"]
    assert (await get_document(channel, pid, "x")).stage == "embedding"
