"""The worker loop end to end: real claimer, gateway (S3, Milvus Lite), Triton and embedder processes.

stage → pending → embedding → indexed → Query finds the staged text; a
SIGTERM drains (exit 0, nothing left held); re-staging replaces rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from grpc import aio
from support.embedding_worker import (
    actual_rows,
    all_indexed,
    document,
    documents,
    expected_rows,
    index_rows,
    stage_counts,
    start_embedder,
)
from support.pipelines import create_pipeline, unique
from support.polling import eventually
from support.stacks import GatewayStack, start_stack
from support.staging import stage_documents

from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.testing import ServiceFactory
from hevlayer.triton.local import LocalTriton


@pytest.fixture(scope="module")
def stack(
    database_url: str, s3: SeaweedS3, embedder_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayStack]:
    running = start_stack(
        database_url, s3, tmp_path_factory.mktemp("worker"), {"EMBEDDER_ADDRESS": embedder_address}
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def channel(stack: GatewayStack) -> AsyncIterator[aio.Channel]:
    chan = open_channel(stack.gateway_address)
    try:
        yield chan
    finally:
        await chan.close()


async def test_staged_documents_are_embedded_indexed_and_queryable(
    stack: GatewayStack, channel: aio.Channel, triton: LocalTriton, service_factory: ServiceFactory
) -> None:
    pipeline_id = unique()
    await create_pipeline(channel, pipeline_id)
    staged = {f"doc-{i}": document(f"doc-{i}", chunks=1 + i % 4) for i in range(24)}
    staged["empty"] = document("empty", chunks=0)
    await stage_documents(channel, pipeline_id, list(staged.values()))
    assert await stage_counts(channel, pipeline_id) == {"pending": len(staged)}

    start_embedder(service_factory, triton.url, stack.gateway_address, pipeline_id)
    await all_indexed(channel, pipeline_id, len(staged))

    states = await documents(channel, pipeline_id)
    assert {s.stage for s in states} == {"indexed"}
    assert all(s.attempts == 1 and not s.last_error for s in states)
    rows = await index_rows(channel, pipeline_id)
    assert actual_rows(rows) == expected_rows(staged)
    hit = next(r for r in rows if (r.document_id, r.chunk_id) == ("doc-3", "c2"))
    assert hit.attributes["position"] == 2
    assert hit.attributes["version"] == 1

    # Query by the text of one chunk finds that chunk first, with its snippet.
    target = staged["doc-7"].chunks[3]
    stub = index_pb2_grpc.IndexServiceStub(channel)
    response = await stub.Query(index_pb2.QueryRequest(pipeline_id=pipeline_id, text=target.text, top_k=3))
    best = response.hits[0]
    assert (best.document_id, best.chunk_id) == ("doc-7", "c3")
    assert best.attributes["text"] == target.text
    assert best.score > 0.99

    # Re-staging a document with fewer, different chunks replaces its rows: none is stale.
    staged["doc-7"] = document("doc-7", chunks=2, version=2)
    await stage_documents(channel, pipeline_id, [staged["doc-7"]])
    await all_indexed(channel, pipeline_id, len(staged))
    assert actual_rows(await index_rows(channel, pipeline_id)) == expected_rows(staged)


@pytest.mark.parametrize("drain_seconds", ["0", "20"])
async def test_sigterm_finishes_or_releases_what_is_held_and_exits_0(
    stack: GatewayStack,
    channel: aio.Channel,
    triton: LocalTriton,
    service_factory: ServiceFactory,
    drain_seconds: str,
) -> None:
    pipeline_id = unique()
    await create_pipeline(channel, pipeline_id)
    staged = {f"doc-{i}": document(f"doc-{i}", chunks=4) for i in range(80)}
    await stage_documents(channel, pipeline_id, list(staged.values()))
    embedder = start_embedder(
        service_factory,
        triton.url,
        stack.gateway_address,
        pipeline_id,
        EMBEDDER_WORKER_DRAIN_SECONDS=drain_seconds,
        EMBEDDER_WORKER_BATCH_SIZE="8",
    )

    async def working() -> bool:
        counts = await stage_counts(channel, pipeline_id)
        return counts.get("embedding", 0) > 0 and counts.get("indexed", 0) > 0

    await eventually(working, 60, "the worker holding documents while others are indexed")
    assert embedder.stop(grace=60) == 0
    counts = await stage_counts(channel, pipeline_id)
    assert set(counts) <= {"pending", "indexed"}, counts  # nothing is left held
    released = [s for s in await documents(channel, pipeline_id) if s.stage == "pending" and s.attempts]
    assert all("shut down" in s.last_error for s in released)
    if drain_seconds == "0":
        assert released, counts

    # Another embedder finishes the rest; every chunk is in the index exactly once.
    start_embedder(service_factory, triton.url, stack.gateway_address, "*")
    await all_indexed(channel, pipeline_id, len(staged))
    assert actual_rows(await index_rows(channel, pipeline_id)) == expected_rows(staged)


async def test_every_pipeline_but_the_excluded_ones(
    stack: GatewayStack, channel: aio.Channel, triton: LocalTriton, service_factory: ServiceFactory
) -> None:
    """EMBEDDER_WORKER_PIPELINES=* leaves the pipelines of EMBEDDER_WORKER_EXCLUDE_PIPELINES
    (ids, or prefixes ending in *) to other workers: their documents are never claimed."""
    worked, solo, external = unique("worked"), unique("solo"), unique("external")
    for pipeline_id in (worked, solo, external):
        await create_pipeline(channel, pipeline_id)
        await stage_documents(channel, pipeline_id, [document(f"doc-{i}", chunks=2) for i in range(3)])
    embedder = start_embedder(
        service_factory,
        triton.url,
        stack.gateway_address,
        "*",
        EMBEDDER_WORKER_EXCLUDE_PIPELINES=f"{solo},external-*",
        EMBEDDER_WORKER_REFRESH_SECONDS="0.2",
    )
    await all_indexed(channel, worked, 3)
    # The three pipelines were listed together: the excluded ones were skipped.
    log = embedder.log_path.read_text(errors="replace")
    assert f"working a new pipeline: {worked}" in log
    for pipeline_id in (solo, external):
        assert f"working a new pipeline: {pipeline_id}" not in log
        states = await documents(channel, pipeline_id)
        assert [(s.stage, s.attempts) for s in states] == [("pending", 0)] * 3, pipeline_id
