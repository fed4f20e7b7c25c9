"""Gateway read/write benchmarks over gRPC (issue 5), beside ``bench/read_write.py``.

Starts PostgreSQL, SeaweedFS, a claimer and a gateway (disk cache, Milvus
Lite sink) as real processes and measures, through the gateway's public gRPC
API:

* ``ReadChunks`` chunks/s with a warm cache (documents staged, then claimed;
  the staging already filled the cache), then cold (the cache's files
  removed: every segment from S3 with merged ranged GETs), against the
  baseline of one aiobotocore ranged GET per document (32 in flight) of the
  same segments;
* ``WriteVectors`` vectors/s into Milvus Lite (lease checks, validation,
  replace, transition to indexed), one call per batch of ``--batch-docs``
  documents, case ``new`` and case ``rewrite`` (the documents re-staged,
  re-claimed and written again), against ``pymilvus upsert`` of the same rows
  directly (``bench/read_write.py``'s baseline, same generated workload),
  interleaved batch by batch, best of ``--rounds`` rounds. Goal: ratio >= 0.8.

Staging and claiming are not timed; request messages are built before the
clock starts, as the baseline's rows are.

    .venv/bin/python bench/read_write_grpc.py [--docs 2000] [--chunks 10] [--dim 384]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support: the helpers tests share

from grpc import aio
from read_write import Workload
from staging import Stack, create_pipeline, running_stack
from support.s3 import gateway_s3_settings

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.gateway.chunkstore import Backing, open_s3_client
from hevlayer.gateway.convert import python_to_struct
from hevlayer.gateway.sinks import DistanceMetric
from hevlayer.gateway.sinks.base import NamespaceSpec, prepare_documents

WORKER = "bench-worker"
METRIC = DistanceMetric.COSINE_DISTANCE
CLAIM_STAGE = "embedding"
READ_WINDOW = 100


@dataclass(frozen=True)
class Measurement:
    """One path's time on one case."""

    name: str
    case: str
    vectors: int
    seconds: float
    baseline: bool = False

    @property
    def rate(self) -> float:
        """Vectors per second."""
        return self.vectors / self.seconds if self.seconds > 0 else float("inf")


class DirectMilvus:
    """Baseline: ``MilvusClient.upsert`` of the same rows, prebuilt (the sink's collection
    layout, attributes as a dict), into its own Milvus Lite file in this process."""

    def __init__(self, workload: Workload, directory: Path) -> None:
        from pymilvus import MilvusClient

        from hevlayer.gateway.sinks.milvus import collection_schema, index_params, milvus_row

        self.path = str(directory / "direct.db")
        self.client = MilvusClient(self.path)
        spec = NamespaceSpec(workload.dimension, METRIC)
        self.rows = [
            [
                {**milvus_row(row), "attributes": row.attributes}
                for document in prepare_documents(batch, spec)
                for row in document.rows
            ]
            for batch in workload.batches
        ]
        self.client.create_collection(
            "direct", schema=collection_schema(workload.dimension), consistency_level="Strong"
        )
        self.client.create_index("direct", index_params(METRIC, lite=True), sync=False)
        self.client.load_collection("direct")

    def upsert(self, batch: int) -> float:
        """Upsert one batch; seconds."""
        started = time.perf_counter()
        self.client.upsert("direct", self.rows[batch])
        return time.perf_counter() - started

    def close(self) -> None:
        from milvus_lite.server_manager import server_manager_instance

        self.client.close()
        server_manager_instance.release_server(self.path)


def documents_of(workload: Workload, prefix: str = "") -> list[document_pb2.Document]:
    """The staged form of the workload: one chunk per row (its text attribute as text)."""
    out = []
    for batch in workload.batches:
        for document_id, rows in batch.items():
            document = document_pb2.Document(id=prefix + document_id)
            for row in rows:
                chunk = document.chunks.add(id=row.chunk_id, text=str(row.attributes["text"]))
                chunk.metadata.update({"page": row.attributes["page"]})
            out.append(document)
    return out


async def stage_and_claim(
    channel: aio.Channel, pipeline_id: str, documents: list[document_pb2.Document]
) -> dict[str, int]:
    """Stage every document (one stream), claim them all; document id -> fencing token."""
    staging = staging_pb2_grpc.StagingServiceStub(channel)

    async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
        for start in range(0, len(documents), 100):
            yield staging_pb2.StageDocumentsRequest(
                pipeline_id=pipeline_id, documents=documents[start : start + 100]
            )

    async for response in staging.StageDocuments(requests()):
        for result in response.results:
            if result.outcome != staging_pb2.STAGE_OUTCOME_STAGED:
                raise SystemExit(f"staging failed: {result.error.message}")
    leases = lease_pb2_grpc.LeaseServiceStub(channel)
    tokens: dict[str, int] = {}
    while len(tokens) < len(documents):
        claimed = await leases.ClaimDocuments(
            lease_pb2.ClaimDocumentsRequest(
                pipeline_id=pipeline_id,
                stage="pending",
                claim_stage=CLAIM_STAGE,
                limit=10000,
                worker_id=WORKER,
            )
        )
        if not claimed.leases:
            raise SystemExit(f"claimed {len(tokens)} of {len(documents)} documents")
        tokens.update((lease.document_id, lease.fencing_token) for lease in claimed.leases)
    return tokens


async def read_all(channel: aio.Channel, pipeline_id: str, tokens: dict[str, int]) -> tuple[int, float]:
    """ReadChunks of every document, windows of 100 leases, 4 calls in flight; (chunks, seconds)."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    items = list(tokens.items())
    requests = [
        staging_pb2.ReadChunksRequest(
            pipeline_id=pipeline_id,
            worker_id=WORKER,
            stage=CLAIM_STAGE,
            leases=[
                document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in items[i : i + READ_WINDOW]
            ],
        )
        for i in range(0, len(items), READ_WINDOW)
    ]
    limit = asyncio.Semaphore(4)
    chunks = 0

    async def one(request: staging_pb2.ReadChunksRequest) -> None:
        nonlocal chunks
        async with limit:
            async for response in stub.ReadChunks(request):
                if response.HasField("error"):
                    raise SystemExit(f"read failed: {response.error.message}")
                chunks += len(response.chunks)

    started = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests))
    return chunks, time.perf_counter() - started


async def direct_gets(stack: Stack, backings: list[Backing]) -> float:
    """Baseline: one ranged GET per document segment, 32 in flight; seconds."""
    settings = gateway_s3_settings(stack.s3, stack.bucket)
    async with AsyncExitStack() as exits:
        client = await open_s3_client(settings, exits)
        limit = asyncio.Semaphore(32)

        async def get(backing: Backing) -> None:
            async with limit:
                response = await client.get_object(
                    Bucket=stack.bucket,
                    Key=backing.key,
                    Range=f"bytes={backing.offset}-{backing.offset + backing.length - 1}",
                )
                async with response["Body"] as body:
                    await body.read()

        started = time.perf_counter()
        await asyncio.gather(*(get(b) for b in backings))
        return time.perf_counter() - started


async def backings_of(stack: Stack, channel: aio.Channel, pipeline_id: str, ids: list[str]) -> list[Backing]:
    """The documents' backings, as the claimer holds them (CheckLeases)."""
    from hevlayer.gateway.claimer_client import ClaimerClient

    claimer_channel = open_channel(stack.claimer.grpc_address or "")
    try:
        client = ClaimerClient(claimer_channel)
        checks = []
        for start in range(0, len(ids), 1000):
            checks += await client.probe(pipeline_id, ids[start : start + 1000])
        return [Backing.parse(c.backing) for c in checks]
    finally:
        await claimer_channel.close()


def write_requests(
    workload: Workload, pipeline_id: str, tokens: dict[str, int], prefix: str = ""
) -> list[index_pb2.WriteVectorsRequest]:
    """One message per document, built before timing."""
    requests = []
    for batch in workload.batches:
        for document_id, rows in batch.items():
            requests.append(
                index_pb2.WriteVectorsRequest(
                    pipeline_id=pipeline_id,
                    worker_id=WORKER,
                    from_stage=CLAIM_STAGE,
                    lease=document_pb2.LeaseRef(
                        document_id=prefix + document_id, fencing_token=tokens[prefix + document_id]
                    ),
                    vectors=[
                        document_pb2.Vector(
                            id=row.chunk_id,
                            values=row.values,
                            attributes=python_to_struct(dict(row.attributes)),
                        )
                        for row in rows
                    ],
                    end_of_document=True,
                )
            )
    return requests


async def write_all(channel: aio.Channel, requests: list[index_pb2.WriteVectorsRequest]) -> float:
    """One WriteVectors stream of every request; seconds."""
    stub = index_pb2_grpc.IndexServiceStub(channel)

    async def stream() -> AsyncIterator[index_pb2.WriteVectorsRequest]:
        for request in requests:
            yield request

    started = time.perf_counter()
    response = await stub.WriteVectors(stream())
    elapsed = time.perf_counter() - started
    bad = [r for r in response.results if r.outcome != index_pb2.WRITE_OUTCOME_INDEXED]
    if bad or len(response.results) != len(requests):
        raise SystemExit(f"WriteVectors: {len(bad)} documents not indexed ({bad[:1]})")
    return elapsed


async def interleaved_writes(
    stack: Stack, channel: aio.Channel, workload: Workload, round_number: int, directory: Path
) -> list[Measurement]:
    """Both write paths batch by batch, alternating which goes first, so that load from
    other processes hits them alike: pymilvus upserting a batch's rows directly, and one
    ``WriteVectors`` call (one stream) with the same batch through the gateway.

    The gateway pipeline gets one warm-up document first (not timed): it creates the sink's
    collection, which the baseline also creates before its clock starts. Staging and claiming
    are not timed; request messages are built before the clock starts.
    """
    pipeline_id = f"bench-write-{round_number}"
    await create_pipeline(channel, pipeline_id)
    warmup = Workload.generate(1, workload_chunks(workload), workload.dimension, 1, seed=99)
    warm_tokens = await stage_and_claim(channel, pipeline_id, documents_of(warmup, "warmup-"))
    await write_all(channel, write_requests(warmup, pipeline_id, warm_tokens, prefix="warmup-"))
    direct = DirectMilvus(workload, directory)
    documents = documents_of(workload)
    results = []
    try:
        for case in ("new", "rewrite"):
            tokens = await stage_and_claim(channel, pipeline_id, documents)
            requests = write_requests(workload, pipeline_id, tokens)
            per_batch = [len(batch) for batch in workload.batches]
            base_seconds = grpc_seconds = 0.0
            start = 0
            for index, count in enumerate(per_batch):
                batch_requests = requests[start : start + count]
                start += count
                if (index + round_number) % 2 == 0:
                    base_seconds += direct.upsert(index)
                    grpc_seconds += await write_all(channel, batch_requests)
                else:
                    grpc_seconds += await write_all(channel, batch_requests)
                    base_seconds += direct.upsert(index)
            results.append(
                Measurement("pymilvus upsert", case, workload.vectors, base_seconds, baseline=True)
            )
            results.append(Measurement("gRPC WriteVectors", case, workload.vectors, grpc_seconds))
    finally:
        direct.close()
    return results


def workload_chunks(workload: Workload) -> int:
    """Chunks per document of ``workload``."""
    return len(next(iter(workload.batches[0].values())))


async def run(args: argparse.Namespace) -> None:
    workload = Workload.generate(args.docs, args.chunks, args.dim, args.batch_docs)
    best: dict[tuple[str, str], Measurement] = {}

    def keep(measurement: Measurement) -> None:
        key = (measurement.name, measurement.case)
        if key not in best or measurement.rate > best[key].rate:
            best[key] = measurement

    with (
        tempfile.TemporaryDirectory(prefix="hevlayer-bench-cache-") as cache_dir,
        running_stack({"GATEWAY_CACHE_DIR": cache_dir}) as stack,
    ):
        channel = open_channel(stack.gateway_address)
        try:
            # ReadChunks.
            read_docs = documents_of(Workload.generate(args.read_docs, args.chunks, 4, 100, seed=11))
            await create_pipeline(channel, "bench-read")
            tokens = await stage_and_claim(channel, "bench-read", read_docs)
            await asyncio.sleep(0.5)  # let the background cache writes of staging finish
            warm_chunks, warm_seconds = await read_all(channel, "bench-read", tokens)
            warm_again, warm_again_seconds = await read_all(channel, "bench-read", tokens)
            shutil.rmtree(Path(cache_dir), ignore_errors=True)
            cold_chunks, cold_seconds = await read_all(channel, "bench-read", tokens)
            backings = await backings_of(stack, channel, "bench-read", list(tokens))
            direct_seconds = await direct_gets(stack, backings)

            # WriteVectors, interleaved batch by batch with the direct pymilvus baseline.
            for round_number in range(args.rounds):
                with tempfile.TemporaryDirectory(prefix="hevlayer-bench-") as directory:
                    for measurement in await interleaved_writes(
                        stack, channel, workload, round_number, Path(directory)
                    ):
                        keep(measurement)
        finally:
            await channel.close()

    warm_rate = max(warm_chunks / warm_seconds, warm_again / warm_again_seconds)
    direct_rate = len(backings) * args.chunks / direct_seconds
    cold_rate = cold_chunks / cold_seconds
    print(
        f"ReadChunks: {args.read_docs} documents x {args.chunks} chunks, "
        f"{READ_WINDOW} leases per call, 4 calls in flight"
    )
    print(f"  warm cache (disk):           {warm_rate:9.0f} chunks/s   ratio {warm_rate / direct_rate:5.2f}")
    print(f"  cold (S3, merged ranges):    {cold_rate:9.0f} chunks/s   ratio {cold_rate / direct_rate:5.2f}")
    print(f"  baseline, 1 ranged GET/doc:  {direct_rate:9.0f} chunks/s   ratio  1.00")
    print(
        f"WriteVectors into Milvus Lite: {args.docs} docs x {args.chunks} chunks = "
        f"{workload.vectors} vectors, dim {args.dim}, {args.batch_docs} docs per call, "
        f"interleaved, best of {args.rounds} rounds"
    )
    baselines = {m.case: m for m in best.values() if m.baseline}
    for m in sorted(best.values(), key=lambda m: (m.case != "new", not m.baseline, m.name)):
        ratio = m.rate / baselines[m.case].rate if m.case in baselines else float("nan")
        print(f"  {m.name:<36} {m.case:<8} {m.rate:9.0f} vectors/s   ratio {ratio:5.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--read-docs", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch-docs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
