"""Bounded WriteVectors and leases named by their token, on a real gateway and claimer:
a fencing token of 0 is refused over gRPC (ReadChunks, WriteVectors) and changes nothing;
a vector of the wrong dimension rejects its document as it arrives; a document over
GATEWAY_WRITE_MAX_DOCUMENT_BYTES is rejected whole (nothing of it written) while the
stream's other documents are written."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from grpc import aio
from support.leases import CLAIM_STAGE, WORKER, claim
from support.pipelines import create_pipeline
from support.staging import get_document, stage
from support.vectors import DIM

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2 as ix
from hevlayer.api.index.v1 import index_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.gateway.grpc_index import WriteLimits

MAX_DOCUMENT_BYTES = 16 * 1024


@pytest.fixture(scope="module")
def gateway_env() -> dict[str, str]:
    return {"GATEWAY_WRITE_MAX_DOCUMENT_BYTES": str(MAX_DOCUMENT_BYTES), "GATEWAY_WRITE_BUFFER_BYTES": "8192"}


def vectors(count: int, *, dim: int = DIM, prefix: str = "c") -> list[document_pb2.Vector]:
    out = []
    for i in range(count):
        vector = document_pb2.Vector(id=f"{prefix}-{i}", values=[0.1 * (i % 7 + 1)] * dim)
        vector.attributes.update({"n": i})
        out.append(vector)
    return out


async def write(
    channel: aio.Channel,
    pipeline_id: str,
    documents: list[tuple[str, int, list[document_pb2.Vector]]],
    *,
    per_message: int = 2,
) -> list[ix.WriteResult]:
    """WriteVectors of (document id, fencing token, vectors), ``per_message`` vectors a message."""

    async def requests() -> AsyncIterator[ix.WriteVectorsRequest]:
        for document_id, token, values in documents:
            parts = [values[i : i + per_message] for i in range(0, len(values), per_message)] or [[]]
            for index, part in enumerate(parts):
                yield ix.WriteVectorsRequest(
                    pipeline_id=pipeline_id,
                    worker_id=WORKER,
                    from_stage=CLAIM_STAGE,
                    lease=document_pb2.LeaseRef(document_id=document_id, fencing_token=token),
                    vectors=part,
                    end_of_document=index == len(parts) - 1,
                )

    response = await index_pb2_grpc.IndexServiceStub(channel).WriteVectors(requests())
    return list(response.results)


async def staged_and_claimed(
    channel: aio.Channel, count: int, dimension: int = 0, chunks: Sequence[int] = ()
) -> tuple[str, dict[str, int]]:
    """``count`` documents ``doc-i`` staged and claimed, document i with ``chunks[i]`` chunks (2
    by default) with the ids :func:`vectors` gives (``c-0``, ``c-1``, ...)."""
    pipeline_id = await create_pipeline(channel, dimension=dimension)
    documents = []
    for i in range(count):
        staged = document_pb2.Document(id=f"doc-{i}")
        for n in range(chunks[i] if i < len(chunks) else 2):
            staged.chunks.add(id=f"c-{n}", text=f"chunk {n} of doc-{i}")
        documents.append(staged)
    await stage(channel, pipeline_id, documents)
    return pipeline_id, await claim(channel, pipeline_id)


async def stages(channel: aio.Channel, pipeline_id: str, ids: list[str]) -> list[str]:
    return [(await get_document(channel, pipeline_id, d)).stage for d in ids]


def fields(result: ix.WriteResult) -> list[str]:
    return [v.field for v in result.error.field_violations]


async def test_token_zero_is_refused_over_grpc_and_changes_nothing(channel: aio.Channel) -> None:
    pipeline_id, tokens = await staged_and_claimed(channel, 2)
    read = staging_pb2.ReadChunksRequest(
        pipeline_id=pipeline_id,
        worker_id=WORKER,
        stage=CLAIM_STAGE,
        leases=[
            document_pb2.LeaseRef(document_id="doc-0", fencing_token=tokens["doc-0"]),
            document_pb2.LeaseRef(document_id="doc-1"),
        ],
    )
    with pytest.raises(aio.AioRpcError) as refused:
        [r async for r in staging_pb2_grpc.StagingServiceStub(channel).ReadChunks(read)]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "leases[1].fencing_token" in (refused.value.details() or "")

    results = await write(
        channel, pipeline_id, [("doc-0", 0, vectors(2)), ("doc-1", tokens["doc-1"], vectors(2))]
    )
    assert [r.outcome for r in results] == [ix.WRITE_OUTCOME_REJECTED, ix.WRITE_OUTCOME_INDEXED]
    assert fields(results[0]) == ["lease.fencing_token"]
    assert "0 is no wildcard" in results[0].error.message
    assert await stages(channel, pipeline_id, ["doc-0", "doc-1"]) == [CLAIM_STAGE, "indexed"]
    # The lease refused with token 0 is still the worker's: written with its token, it is indexed.
    again = await write(channel, pipeline_id, [("doc-0", tokens["doc-0"], vectors(2))])
    assert [r.outcome for r in again] == [ix.WRITE_OUTCOME_INDEXED]


async def test_the_dimension_is_checked_as_the_vectors_arrive(channel: aio.Channel) -> None:
    pipeline_id, tokens = await staged_and_claimed(channel, 3, dimension=DIM, chunks=[3, 3, 3])
    wrong_first = vectors(3, dim=DIM + 1)
    wrong_third = [*vectors(2), *vectors(1, dim=3, prefix="odd")]
    results = await write(
        channel,
        pipeline_id,
        [
            ("doc-0", tokens["doc-0"], wrong_first),
            ("doc-1", tokens["doc-1"], wrong_third),
            ("doc-2", tokens["doc-2"], vectors(3)),
        ],
    )
    assert [r.outcome for r in results] == [
        ix.WRITE_OUTCOME_REJECTED,
        ix.WRITE_OUTCOME_REJECTED,
        ix.WRITE_OUTCOME_INDEXED,
    ]
    assert fields(results[0]) == ["vectors[0].values"]
    assert f"expected {DIM} values, got {DIM + 1}" in results[0].error.message
    assert fields(results[1]) == ["vectors[2].values"]
    assert results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert await stages(channel, pipeline_id, ["doc-0", "doc-1", "doc-2"]) == [
        CLAIM_STAGE,
        CLAIM_STAGE,
        "indexed",
    ]


async def test_without_a_pipeline_dimension_the_namespace_or_first_vector_fixes_it(
    channel: aio.Channel,
) -> None:
    pipeline_id, tokens = await staged_and_claimed(channel, 3)
    first = await write(channel, pipeline_id, [("doc-0", tokens["doc-0"], vectors(2, dim=6))])
    assert [r.outcome for r in first] == [ix.WRITE_OUTCOME_INDEXED]
    # A later stream meets the namespace's (or the recorded) dimension, 6.
    later = await write(
        channel,
        pipeline_id,
        [("doc-1", tokens["doc-1"], vectors(2, dim=5)), ("doc-2", tokens["doc-2"], vectors(2, dim=6))],
    )
    assert [r.outcome for r in later] == [ix.WRITE_OUTCOME_REJECTED, ix.WRITE_OUTCOME_INDEXED]
    assert "expected 6 values, got 5" in later[0].error.message


async def test_a_document_over_the_bound_is_rejected_whole(channel: aio.Channel) -> None:
    per_vector = ix.WriteVectorsRequest(vectors=vectors(1)).ByteSize()
    fits = MAX_DOCUMENT_BYTES // (2 * per_vector)
    too_many = 2 * MAX_DOCUMENT_BYTES // per_vector
    pipeline_id, tokens = await staged_and_claimed(channel, 3, dimension=DIM, chunks=[1, fits, 3])
    results = await write(
        channel,
        pipeline_id,
        [
            ("doc-0", tokens["doc-0"], vectors(too_many)),
            ("doc-1", tokens["doc-1"], vectors(fits)),
            ("doc-2", tokens["doc-2"], vectors(3)),
        ],
        per_message=50,
    )
    assert [r.outcome for r in results] == [
        ix.WRITE_OUTCOME_REJECTED,
        ix.WRITE_OUTCOME_INDEXED,
        ix.WRITE_OUTCOME_INDEXED,
    ]
    assert (results[0].vectors_written, results[1].vectors_written) == (0, fits)
    assert fields(results[0]) == ["vectors"]
    expected = WriteLimits(max_document_bytes=MAX_DOCUMENT_BYTES).too_large()
    assert results[0].error.message == expected.message
    assert "GATEWAY_WRITE_MAX_DOCUMENT_BYTES" in results[0].error.message
    assert await stages(channel, pipeline_id, ["doc-0", "doc-1", "doc-2"]) == [
        CLAIM_STAGE,
        "indexed",
        "indexed",
    ]
