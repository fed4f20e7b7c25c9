"""Helpers of the gateway tests (imported as ``gateway.helpers``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent import futures
from typing import Any
from xml.etree import ElementTree

import grpc
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.devstack import SeaweedS3
from hevlayer.devstack.ports import free_port

WORKER = "gpu-worker-0"
CLAIM_STAGE = "embedding"
DIM = 4
"""The dimension of the stand-in embedding service's vectors."""


def unreachable_turbopuffer() -> dict[str, str]:
    """Gateway settings of a Turbopuffer sink nobody answers (for sink failures: 502,
    UNAVAILABLE, sink error metrics): a free loopback port, no retries, short timeouts."""
    return {
        "GATEWAY_TURBOPUFFER_API_KEY": "test-key",
        "GATEWAY_TURBOPUFFER_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_TURBOPUFFER_MAX_RETRIES": "0",
        "GATEWAY_SINK_TIMEOUT_SECONDS": "5",
    }


def embed(text: str) -> list[float]:
    """A deterministic unit vector for ``text`` (what :class:`FakeEmbedder` answers)."""
    digest = hashlib.sha256(text.encode()).digest()
    values = [digest[i] - 127.5 for i in range(DIM)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


class FakeEmbedder(embedding_pb2_grpc.EmbeddingServiceServicer):
    """A stand-in EmbeddingService: ``embed`` of each text."""

    def Embed(
        self, request_iterator: Iterator[embedding_pb2.EmbedRequest], context: grpc.ServicerContext
    ) -> Iterator[embedding_pb2.EmbedResponse]:
        for request in request_iterator:
            yield embedding_pb2.EmbedResponse(
                embeddings=[embedding_pb2.Embedding(values=embed(text)) for text in request.texts]
            )

    def DescribeModel(
        self, request: embedding_pb2.DescribeModelRequest, context: grpc.ServicerContext
    ) -> embedding_pb2.DescribeModelResponse:
        return embedding_pb2.DescribeModelResponse(
            model="fake", dimension=DIM, max_batch_size=64, normalized=True
        )


@contextlib.contextmanager
def fake_embedder() -> Iterator[str]:
    """A :class:`FakeEmbedder` gRPC server on a free port; its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(FakeEmbedder(), server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address
    finally:
        server.stop(0)


def unique(prefix: str = "p") -> str:
    """A fresh pipeline id."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def document(
    doc_id: str, chunks: int = 3, *, text: str = "chunk text", page: bool = True
) -> document_pb2.Document:
    """A document of ``chunks`` chunks with ids ``{doc_id}-{j}``."""
    doc = document_pb2.Document(id=doc_id)
    for j in range(chunks):
        chunk = doc.chunks.add(id=f"{doc_id}-{j}", text=f"{text} {doc_id} {j}")
        if page:
            chunk.metadata.update({"page": j})
    return doc


async def create_pipeline(channel: aio.Channel, pipeline_id: str | None = None, **fields: Any) -> str:
    """Create a pipeline through the gateway; its id."""
    pipeline_id = pipeline_id or unique()
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    await stub.CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id, **fields))
    )
    return pipeline_id


async def stage(
    channel: aio.Channel,
    pipeline_id: str,
    *batches: Sequence[document_pb2.Document],
    skip_unchanged: bool = False,
) -> list[staging_pb2.StageResult]:
    """Stage batches through one StageDocuments stream; every result, in order."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)

    async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
        for batch in batches:
            yield staging_pb2.StageDocumentsRequest(
                pipeline_id=pipeline_id, documents=list(batch), skip_unchanged=skip_unchanged
            )

    results: list[staging_pb2.StageResult] = []
    async for response in stub.StageDocuments(requests()):
        results.extend(response.results)
    return results


async def claim(
    channel: aio.Channel, pipeline_id: str, limit: int = 100, *, worker: str = WORKER, lease_seconds: int = 0
) -> dict[str, int]:
    """Claim pending documents into ``embedding``; document id -> fencing token."""
    stub = lease_pb2_grpc.LeaseServiceStub(channel)
    response = await stub.ClaimDocuments(
        lease_pb2.ClaimDocumentsRequest(
            pipeline_id=pipeline_id,
            stage="pending",
            claim_stage=CLAIM_STAGE,
            limit=limit,
            worker_id=worker,
            lease_seconds=lease_seconds,
        )
    )
    return {lease.document_id: lease.fencing_token for lease in response.leases}


async def read_chunks(
    channel: aio.Channel, pipeline_id: str, leases: dict[str, int], *, worker: str = WORKER
) -> list[staging_pb2.ReadChunksResponse]:
    """Every ReadChunks response for ``leases``."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    request = staging_pb2.ReadChunksRequest(
        pipeline_id=pipeline_id,
        worker_id=worker,
        stage=CLAIM_STAGE,
        leases=[document_pb2.LeaseRef(document_id=d, fencing_token=t) for d, t in leases.items()],
    )
    return [response async for response in stub.ReadChunks(request)]


async def get_document(channel: aio.Channel, pipeline_id: str, document_id: str) -> staging_pb2.DocumentState:
    """GetDocument."""
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    response = await stub.GetDocument(
        staging_pb2.GetDocumentRequest(pipeline_id=pipeline_id, document_id=document_id)
    )
    state: staging_pb2.DocumentState = response.document
    return state


def bucket_keys(s3: SeaweedS3, bucket: str, prefix: str = "") -> list[str]:
    """Every key of ``bucket`` under ``prefix`` (one signed ListObjects; tests stay below 1000)."""
    status, body = s3.request("GET", f"/{bucket}")
    if status != 200:
        raise RuntimeError(f"listing {bucket} failed: {status} {body[:200]!r}")
    root = ElementTree.fromstring(body)
    keys: list[str] = []
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "IsTruncated" and element.text == "true":
            raise RuntimeError(f"bucket {bucket} holds more than one page of keys")
        if tag == "Key" and element.text and element.text.startswith(prefix):
            keys.append(element.text)
    return sorted(keys)


def pack_keys(s3: SeaweedS3, bucket: str, pipeline_id: str) -> list[str]:
    """Pack objects of one pipeline."""
    return [k for k in bucket_keys(s3, bucket, f"pipelines/{pipeline_id}/") if k.endswith(".pack")]


def metric_samples(
    http_address: str, name: str, path: str = "/metrics"
) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric on a service's HTTP address."""
    with urllib.request.urlopen(f"http://{http_address}{path}", timeout=10) as response:
        text = response.read().decode()
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true (no assertion on how long it takes, only a bound)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.1)


def http_json(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One HTTP request with a JSON body (and ``headers``); (status, decoded JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode()
