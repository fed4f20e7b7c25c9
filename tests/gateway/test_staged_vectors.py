"""A write's vectors are exactly the document's staged chunks (issue 15, deliverable 2).

Real claimer + gateway (disk cache, Milvus Lite). For a document staged under the
fencing token being written, a vector with an unknown chunk id is INVALID_ARGUMENT
naming ``vectors[i].id``, a missing chunk names ``vectors``; nothing is written and
the document stays in its claim stage. Over gRPC (WriteVectors) and REST
(``PUT .../vectors``), with the chunk ids known from the worker's chunk read or
read back from the chunk cache / S3.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc import aio
from support.leases import claim, read_chunks
from support.pipelines import create_pipeline
from support.service_http import http_json
from support.stacks import GatewayStack
from support.staging import document, get_document, stage
from support.vectors import DIM, embed

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2 as ix
from hevlayer.api.index.v1 import index_pb2_grpc


def vectors(chunk_ids: list[str]) -> list[document_pb2.Vector]:
    return [document_pb2.Vector(id=chunk_id, values=embed(chunk_id)) for chunk_id in chunk_ids]


async def write(
    channel: aio.Channel, pipeline_id: str, documents: dict[str, tuple[int, list[document_pb2.Vector]]]
) -> list[ix.WriteResult]:
    """One WriteVectors stream: each document in one message."""

    async def requests() -> AsyncIterator[ix.WriteVectorsRequest]:
        for document_id, (token, rows) in documents.items():
            yield ix.WriteVectorsRequest(
                pipeline_id=pipeline_id,
                worker_id="gpu-worker-0",
                from_stage="embedding",
                lease=document_pb2.LeaseRef(document_id=document_id, fencing_token=token),
                vectors=rows,
                end_of_document=True,
            )

    response = await index_pb2_grpc.IndexServiceStub(channel).WriteVectors(requests())
    return list(response.results)


async def indexed_chunks(channel: aio.Channel, pipeline_id: str, document_id: str) -> list[str]:
    """The chunk ids the index holds for a document."""
    filter = struct_pb2.Struct()
    filter.update({"document_id": document_id})
    response = await index_pb2_grpc.IndexServiceStub(channel).Query(
        ix.QueryRequest(
            pipeline_id=pipeline_id, vector=ix.QueryVector(values=embed("x")), top_k=100, filter=filter
        )
    )
    return sorted(hit.chunk_id for hit in response.hits)


def fields(result: ix.WriteResult) -> list[str]:
    return [violation.field for violation in result.error.field_violations]


async def test_vectors_must_be_exactly_the_staged_chunks_over_grpc(channel: aio.Channel) -> None:
    pid = await create_pipeline(channel, dimension=DIM)
    docs = [document("unread", chunks=3), document("read", chunks=3), document("good", chunks=2)]
    await stage(channel, pid, docs)
    leases = await claim(channel, pid)
    # "read" is read by the worker first (the gateway then remembers its chunk ids);
    # "unread" is not (the gateway reads them back from the chunk cache or S3).
    await read_chunks(channel, pid, {"read": leases["read"]})

    for doc_id in ("unread", "read"):
        unknown, missing, duplicate = (
            await write(
                channel, pid, {doc_id: (leases[doc_id], vectors([f"{doc_id}-0", "zz", f"{doc_id}-2"]))}
            ),
            await write(channel, pid, {doc_id: (leases[doc_id], vectors([f"{doc_id}-0", f"{doc_id}-1"]))}),
            await write(
                channel,
                pid,
                {
                    doc_id: (
                        leases[doc_id],
                        vectors([f"{doc_id}-0", f"{doc_id}-1", f"{doc_id}-2", f"{doc_id}-1"]),
                    )
                },
            ),
        )
        for [result] in (unknown, missing, duplicate):
            assert result.outcome == ix.WRITE_OUTCOME_REJECTED, result
            assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert result.vectors_written == 0
        assert fields(unknown[0]) == ["vectors[1].id"]
        assert "unknown chunk 'zz'" in unknown[0].error.message
        assert fields(missing[0]) == ["vectors"]
        assert missing[0].error.message.startswith(f"vectors: missing chunk {doc_id}-2")
        assert fields(duplicate[0]) == ["vectors[3].id"]
        assert await indexed_chunks(channel, pid, doc_id) == []
        assert (await get_document(channel, pid, doc_id)).stage == "embedding"

    # In one batch, the bad document is rejected alone; the others are written.
    results = await write(
        channel,
        pid,
        {
            "unread": (leases["unread"], vectors(["unread-0", "unread-1", "unread-2"])),
            "read": (leases["read"], vectors(["read-0", "nope"])),
            "good": (leases["good"], vectors(["good-1", "good-0"])),
        },
    )
    assert [r.outcome for r in results] == [
        ix.WRITE_OUTCOME_INDEXED,
        ix.WRITE_OUTCOME_REJECTED,
        ix.WRITE_OUTCOME_INDEXED,
    ]
    assert fields(results[1]) == ["vectors[1].id"]
    assert await indexed_chunks(channel, pid, "unread") == ["unread-0", "unread-1", "unread-2"]
    assert await indexed_chunks(channel, pid, "read") == []
    assert await indexed_chunks(channel, pid, "good") == ["good-0", "good-1"]


async def test_the_chunks_are_those_staged_under_the_written_token(channel: aio.Channel) -> None:
    pid = await create_pipeline(channel, dimension=DIM)
    await stage(channel, pid, [document("moving", chunks=3)])
    first = await claim(channel, pid)
    await read_chunks(channel, pid, first)
    # Re-staged with other chunks: the new version's token has chunks v2-0 and v2-1 only.
    renamed = document_pb2.Document(id="moving")
    renamed.chunks.add(id="v2-0", text="second version, first chunk")
    renamed.chunks.add(id="v2-1", text="second version, second chunk")
    await stage(channel, pid, [renamed])
    second = await claim(channel, pid)
    assert second["moving"] > first["moving"]

    [old_ids] = await write(channel, pid, {"moving": (second["moving"], vectors(["moving-0", "moving-1"]))})
    assert old_ids.outcome == ix.WRITE_OUTCOME_REJECTED
    assert fields(old_ids) == ["vectors[0].id"]
    [empty] = await write(channel, pid, {"moving": (second["moving"], [])})
    assert empty.outcome == ix.WRITE_OUTCOME_REJECTED
    assert empty.error.message.startswith("vectors: missing chunk v2-0 (and 1 more)")
    [right] = await write(channel, pid, {"moving": (second["moving"], vectors(["v2-0", "v2-1"]))})
    assert right.outcome == ix.WRITE_OUTCOME_INDEXED
    assert await indexed_chunks(channel, pid, "moving") == ["v2-0", "v2-1"]


async def test_vectors_must_be_exactly_the_staged_chunks_over_rest(
    channel: aio.Channel, gateway_stack: GatewayStack
) -> None:
    base = gateway_stack.base_url
    pid = await create_pipeline(channel, dimension=2)
    status, body = http_json(
        "PUT", f"{base}/v2/pipelines/{pid}/documents/d2", {"chunks": [{"id": "d2-0", "text": "only"}]}
    )
    assert status == 200, body
    status, body = http_json(
        "POST",
        f"{base}/v2/pipelines/{pid}/claim",
        {"claim_stage": "embedding", "worker_id": "w", "limit": 10},
    )
    assert [d["document_id"] for d in body["documents"]] == ["d2"], body
    url = f"{base}/v2/pipelines/{pid}/documents/d2/vectors"

    bad: list[tuple[dict[str, Any], str, str]] = [
        (
            {"vectors": [{"id": "zz", "vector": [1.0, 2.0]}]},
            "vectors[0].id",
            "vectors[0].id: unknown chunk 'zz'",
        ),
        ({"vectors": []}, "vectors", "vectors: missing chunk d2-0"),
    ]
    for request, field, message in bad:
        status, body = http_json("PUT", url, request)
        assert status == 400, body
        assert [v["field"] for v in body["error"]["field_violations"]] == [field]
        assert body["error"]["message"].startswith(message), body
    assert await indexed_chunks_2d(base, pid) == []
    assert (await get_document(channel, pid, "d2")).stage == "embedding"

    status, body = http_json("PUT", url, {"vectors": [{"id": "d2-0", "vector": [1.0, 2.0]}]})
    assert status == 200, body
    assert body["outcome"] == "indexed"
    assert await indexed_chunks_2d(base, pid) == ["d2-0"]


async def indexed_chunks_2d(base: str, pipeline_id: str) -> list[str]:
    """The chunk ids a REST vector query finds in a 2-dimensional pipeline."""
    status, body = http_json(
        "POST", f"{base}/v2/pipelines/{pipeline_id}/query", {"vector": [1.0, 2.0], "top_k": 10}
    )
    assert status == 200, body
    return sorted(str(hit["chunk_id"]) for hit in body["hits"])
