"""Crash safety of the worker loop, with real processes everywhere.

* An embedder killed with SIGKILL in the middle of a batch loses nothing and
  leaves nothing stale: once its leases expire a new embedder finishes the
  work, and the index (counted through IndexService.Query, then in the
  Milvus Lite file itself once the gateway has stopped) holds every chunk of
  every document's current version exactly once.
* A Triton outage in the middle of a run gives UNAVAILABLE-driven retries
  with backoff (and releases), never lost or failed documents.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
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
from support.stacks import start_stack
from support.staging import stage_documents

from hevlayer.client.channel import open_channel
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import ServiceFactory
from hevlayer.triton.local import LocalModel, LocalTriton


def metric(process: ServiceProcess, name: str) -> float:
    """The sum of a metric's samples on an embedder's /metrics."""
    address = process.env["HEVLAYER_HTTP_ADDRESS"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def milvus_lite_rows(path: Path, collection: str) -> Counter[tuple[str, str, str]]:
    """Every row of a collection, read from the Milvus Lite file (its gateway stopped)."""
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    client = MilvusClient(str(path))
    try:
        client.load_collection(collection)
        rows = client.query(
            collection, filter='id != ""', output_fields=["document_id", "chunk_id", "attributes"]
        )
    finally:
        client.close()
        server_manager_instance.release_server(str(path.absolute()))
    return Counter((row["document_id"], row["chunk_id"], row["attributes"]["text"]) for row in rows)


async def test_sigkill_mid_batch_then_a_new_embedder_leaves_every_chunk_exactly_once(
    database_url: str,
    s3: SeaweedS3,
    triton: LocalTriton,
    service_factory: ServiceFactory,
    tmp_path: Path,
) -> None:
    stack = start_stack(database_url, s3, tmp_path)
    try:
        async with open_channel(stack.gateway_address) as channel:
            pipeline_id = unique("crash")
            await create_pipeline(channel, pipeline_id)
            # ~70-token chunks: the embedder needs seconds for them, so the kill lands mid-run.
            staged = {f"doc-{i:02d}": document(f"doc-{i:02d}", chunks=4, words=40) for i in range(60)}
            await stage_documents(channel, pipeline_id, list(staged.values()))
            lease = {"EMBEDDER_WORKER_LEASE_SECONDS": "3", "EMBEDDER_WORKER_BATCH_SIZE": "8"}
            first = start_embedder(service_factory, triton.url, stack.gateway_address, pipeline_id, **lease)

            async def mid_batch() -> bool:
                counts = await stage_counts(channel, pipeline_id)
                return (
                    counts.get("embedding", 0) > 0
                    and counts.get("indexed", 0) > 0
                    and metric(first, "hevlayer_embedder_worker_flushes_in_flight") > 0
                )

            await eventually(mid_batch, 60, "the first embedder in the middle of its work")
            assert first.kill() == -9
            states = {s.document_id: s for s in await documents(channel, pipeline_id)}
            held = sorted(d for d, s in states.items() if s.stage == "embedding")
            indexed = sorted(d for d, s in states.items() if s.stage == "indexed")
            assert held
            assert indexed

            # While the dead worker's leases run out, some documents change: indexed
            # ones and held ones get a new version with fewer, different chunks.
            changed = indexed[:3] + held[:3]
            for doc_id in changed:
                staged[doc_id] = document(doc_id, chunks=2, version=2)
            await stage_documents(channel, pipeline_id, [staged[d] for d in changed])

            start_embedder(service_factory, triton.url, stack.gateway_address, pipeline_id, **lease)
            await all_indexed(channel, pipeline_id, len(staged))

            final = {s.document_id: s for s in await documents(channel, pipeline_id)}
            # Documents the killed embedder held were claimed again once their leases expired
            # (not all: a write it had sent completely may still have been applied after the kill).
            assert any(final[d].attempts >= 2 for d in held if d not in changed)
            assert actual_rows(await index_rows(channel, pipeline_id)) == expected_rows(staged)
        stack.gateway.stop(grace=10)
        collection = pipeline_id.replace("-", "_")
        assert milvus_lite_rows(stack.milvus_path, collection) == expected_rows(staged)
    finally:
        stack.stop()


async def test_a_triton_outage_mid_run_is_retried_and_loses_nothing(
    database_url: str, s3: SeaweedS3, service_factory: ServiceFactory, tmp_path: Path
) -> None:
    stack = start_stack(database_url, s3, tmp_path / "stack")
    triton = LocalTriton([LocalModel(max_batch_size=8)], workdir=tmp_path / "triton")
    try:
        triton.start().wait_ready()
        async with open_channel(stack.gateway_address) as channel:
            pipeline_id = unique("outage")
            await create_pipeline(channel, pipeline_id)
            # ~100-token chunks: Triton needs a few seconds for them, so the outage hits mid-run.
            staged = {f"doc-{i:02d}": document(f"doc-{i:02d}", chunks=3, words=60) for i in range(60)}
            await stage_documents(channel, pipeline_id, list(staged.values()))
            embedder = start_embedder(
                service_factory,
                triton.url,
                stack.gateway_address,
                pipeline_id,
                EMBEDDER_TRITON_RETRY_ATTEMPTS="2",
                EMBEDDER_TRITON_RETRY_INITIAL_BACKOFF_SECONDS="0.05",
                EMBEDDER_TRITON_RETRY_MAX_BACKOFF_SECONDS="0.2",
                EMBEDDER_WORKER_RETRY_ATTEMPTS="2",
                EMBEDDER_WORKER_RETRY_MAX_BACKOFF_SECONDS="0.5",
            )

            async def started() -> bool:
                return 0 < (await stage_counts(channel, pipeline_id)).get("indexed", 0) < len(staged)

            await eventually(started, 60, "first documents indexed")
            triton.kill()

            async def released() -> bool:
                if metric(embedder, "hevlayer_embedder_worker_flush_retries_total") == 0:
                    return False
                return any(
                    s.last_error.startswith("embedding:") for s in await documents(channel, pipeline_id)
                )

            await eventually(released, 60, "flushes retried and released while Triton is down")
            triton.restart()
            await all_indexed(channel, pipeline_id, len(staged))
            counts = await stage_counts(channel, pipeline_id)
            assert counts == {"indexed": len(staged)}
            assert actual_rows(await index_rows(channel, pipeline_id)) == expected_rows(staged)
            assert embedder.running
    finally:
        triton.cleanup()
        stack.stop()
