"""Helpers of the worker tests (imported as ``embedder.worker_support``).

A :class:`WorkerStack` is a claimer and a gateway (real processes on the
test's PostgreSQL and SeaweedFS S3, Milvus Lite in a temporary directory);
embedders with the worker on are started with :func:`start_embedder`.
Documents are staged, watched and counted through the gateway only, as a
user would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio
from support.processes import start_claimer

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import ServiceFactory

WORDS = [
    *("river", "mountain", "forest", "desert", "ocean", "valley", "glacier", "canyon", "meadow"),
    *("island", "volcano", "prairie", "lagoon", "tundra", "savanna", "delta", "plateau", "marsh"),
    *("reef", "harbor"),
]


@dataclass
class WorkerStack:
    """A running claimer + gateway for worker tests."""

    claimer: ServiceProcess
    gateway: ServiceProcess
    gateway_address: str
    milvus_path: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for proc in (self.gateway, self.claimer):
            proc.stop(grace=10)


def start_stack(
    database_url: str, s3: SeaweedS3, tmp: Path, *, embedder_address: str = "", **claimer_env: str
) -> WorkerStack:
    """Start a claimer and a gateway on a new bucket; the caller stops them."""
    bucket = f"emb-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    s3_env = s3.client_env(bucket)
    claimer, claimer_address, _ = start_claimer(
        database_url, tmp, tmp / "traces.jsonl", HEVLAYER_LOG_FORMAT="text", **s3_env, **claimer_env
    )
    gateway: ServiceProcess | None = None
    try:
        claimer.wait_ready(timeout=60)
        grpc_address = f"127.0.0.1:{free_port()}"
        milvus_path = tmp / "vectors.db"
        env = {
            **s3_env,
            "CLAIMER_ADDRESS": claimer_address,
            "HEVLAYER_GRPC_ADDRESS": grpc_address,
            "HEVLAYER_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
            "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "5",
            "HEVLAYER_LOG_FORMAT": "text",
            "GATEWAY_CACHE_DIR": str(tmp / "cache"),
            "GATEWAY_MILVUS_LITE_PATH": str(milvus_path),
            "EMBEDDER_ADDRESS": embedder_address,
            # The worker tests exercise batching, credits and faults; authentication is tested
            # in tests/gateway/test_auth.py.
            "GATEWAY_AUTH": "off",
        }
        gateway = ServiceProcess(
            "hevlayer-gateway",
            name="gateway",
            env=env,
            log_path=tmp / f"gateway-{uuid.uuid4().hex[:6]}.log",
            grpc_address=grpc_address,
        ).start()
        gateway.wait_ready(timeout=60)
    except BaseException:
        if gateway is not None:
            print(gateway.log_tail(80))
            gateway.stop(grace=5)
        print(claimer.log_tail(80))
        claimer.stop(grace=5)
        raise
    return WorkerStack(claimer, gateway, grpc_address, milvus_path, tmp, env)


def start_embedder(
    factory: ServiceFactory,
    triton_url: str,
    gateway_address: str,
    pipelines: str,
    **env: str,
) -> ServiceProcess:
    """An embedder process whose worker works ``pipelines`` (waits until it serves)."""
    return factory(
        "hevlayer-embedder",
        name="embedder",
        env={
            "HEVLAYER_LOG_FORMAT": "text",
            "HEVLAYER_SHUTDOWN_GRACE_SECONDS": "2",
            "EMBEDDER_TRITON_URL": triton_url,
            "EMBEDDER_GATEWAY_ADDRESS": gateway_address,
            "EMBEDDER_WORKER_PIPELINES": pipelines,
            **env,
        },
        ready_timeout=60,
    )


def unique(prefix: str = "w") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def text_of(document_id: str, index: int, version: int = 1, words: int = 6) -> str:
    """A distinct chunk text of about ``words`` words."""
    body = " ".join(WORDS[(index * 7 + k * 3 + version) % len(WORDS)] for k in range(words))
    return f"{document_id} part {index} version {version}: {body}"


def document(document_id: str, chunks: int, version: int = 1, words: int = 6) -> document_pb2.Document:
    doc = document_pb2.Document(id=document_id)
    for index in range(chunks):
        chunk = doc.chunks.add(id=f"c{index}", text=text_of(document_id, index, version, words))
        chunk.metadata.update({"position": index, "version": version})
    return doc


async def create_pipeline(channel: aio.Channel, pipeline_id: str, **fields: object) -> None:
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    await stub.CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id, **fields))  # type: ignore[arg-type]
    )


async def stage_counts(channel: aio.Channel, pipeline_id: str) -> dict[str, int]:
    """Documents per stage, from ListDocuments (exact, not the counters)."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    counts: Counter[str] = Counter()
    async for response in stub.ListDocuments(staging_pb2.ListDocumentsRequest(pipeline_id=pipeline_id)):
        counts.update(d.stage for d in response.documents)
    return dict(counts)


async def documents(channel: aio.Channel, pipeline_id: str) -> list[staging_pb2.DocumentState]:
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    out: list[staging_pb2.DocumentState] = []
    async for response in stub.ListDocuments(staging_pb2.ListDocumentsRequest(pipeline_id=pipeline_id)):
        out.extend(response.documents)
    return out


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` until true; a bound, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.1)


async def all_indexed(channel: aio.Channel, pipeline_id: str, count: int, timeout: float = 90) -> None:
    async def done() -> bool:
        return (await stage_counts(channel, pipeline_id)).get("indexed", 0) == count

    await eventually(done, timeout, f"{count} documents of {pipeline_id} indexed")


async def index_rows(
    channel: aio.Channel, pipeline_id: str, dimension: int = 384
) -> list[index_pb2.QueryHit]:
    """Every row of the pipeline's index (a vector query with top_k 1000 over a FLAT
    Milvus Lite index returns all rows when there are fewer than 1000)."""
    stub = index_pb2_grpc.IndexServiceStub(channel)
    response = await stub.Query(
        index_pb2.QueryRequest(
            pipeline_id=pipeline_id,
            vector=index_pb2.QueryVector(values=[1.0 / dimension**0.5] * dimension),
            top_k=1000,
        )
    )
    rows = list(response.hits)
    assert len(rows) < 1000, "too many rows to count with one query"
    return rows


def expected_rows(staged: Mapping[str, document_pb2.Document]) -> Counter[tuple[str, str, str]]:
    """(document id, chunk id, text) of every chunk of the current versions."""
    return Counter((doc_id, chunk.id, chunk.text) for doc_id, doc in staged.items() for chunk in doc.chunks)


def actual_rows(rows: Sequence[index_pb2.QueryHit]) -> Counter[tuple[str, str, str]]:
    return Counter((hit.document_id, hit.chunk_id, str(hit.attributes["text"])) for hit in rows)
