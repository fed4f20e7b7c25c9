"""Driving the embedder's worker loop in tests: embedders with the worker on
(:func:`start_embedder`, in front of a ``support.stacks`` gateway), documents of
distinct worded chunks, and what got staged and indexed, counted through the
gateway only, as a user would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.devstack.processes import ServiceProcess
from hevlayer.devstack.testing import ServiceFactory
from support.polling import eventually

WORDS = [
    *("river", "mountain", "forest", "desert", "ocean", "valley", "glacier", "canyon", "meadow"),
    *("island", "volcano", "prairie", "lagoon", "tundra", "savanna", "delta", "plateau", "marsh"),
    *("reef", "harbor"),
]


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
