"""The worker's batching core in-process: the bounded chunk queue, the one consumer, the writer.

Fakes stand in for Triton (an embed function) and for the gateway (a
document owner that records writes and finish hooks), so these tests check
the batching rules exactly: batches across documents, flush on size or idle,
backpressure, retries, releases and failures through the hook.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from hevlayer.api.document.v1 import document_pb2
from hevlayer.client import WriteOutcome, WriteResult
from hevlayer.common.config import ConfigError, load_settings
from hevlayer.common.errors import InvalidArgument, Unavailable
from hevlayer.embedder.chunk_queue import ChunkQueue
from hevlayer.embedder.consumer import Backoff, DocumentWriter, EmbedConsumer, Vectors, cut_utf8, make_vector
from hevlayer.embedder.inflight import ChunkItem, EndOfDocument, Fate, InFlightDocument
from hevlayer.embedder.settings import WorkerSettings

NO_WAIT = Backoff(attempts=3, initial=0.001, maximum=0.002)


@dataclass(eq=False)
class FakeOwner:
    """A pipeline worker stand-in: records writes and outcomes."""

    pipeline_id: str = "p"
    writes: list[list[str]] = field(default_factory=list)
    written: dict[str, list[document_pb2.Vector]] = field(default_factory=dict)
    outcomes: dict[str, tuple[Fate, str]] = field(default_factory=dict)
    write_failures: list[Exception] = field(default_factory=list)
    stale: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def write(self, documents: Sequence[InFlightDocument]) -> list[WriteResult]:
        if self.write_failures:
            raise self.write_failures.pop(0)
        self.writes.append([d.document_id for d in documents])
        results = []
        for d in documents:
            if d.document_id in self.stale:
                results.append(WriteResult(d.document_id, WriteOutcome.STALE_LEASE, 0, 9, "stale lease"))
            else:
                self.written[d.document_id] = d.written_vectors()
                results.append(WriteResult(d.document_id, WriteOutcome.INDEXED, len(d.written_vectors())))
        return results

    async def finish(self, documents: Sequence[InFlightDocument], outcome: Fate, error: str = "") -> None:
        for d in documents:
            if not d.finished:
                d.finished = True
                self.outcomes[d.document_id] = (outcome, error)
        if len(self.outcomes) >= self.expected:
            self.done.set()


class FakeModel:
    """Embeds a text into [len(text), index of the text's first char]; records batch sizes."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.failures: list[Exception] = []
        self.refuse: str | None = None
        self.gate: asyncio.Event | None = None

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append(list(texts))
        if self.failures:
            raise self.failures.pop(0)
        if self.refuse is not None and self.refuse in texts:
            raise InvalidArgument(f"cannot embed {self.refuse!r}")
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)


def doc(owner: FakeOwner, document_id: str) -> InFlightDocument:
    return InFlightDocument(owner=owner, document_id=document_id, fencing_token=1, expires_at=1e12)


async def produce(queue: ChunkQueue, document: InFlightDocument, texts: Sequence[str]) -> None:
    for text in texts:
        chunk = document_pb2.Chunk(id=f"c{document.queued}", text=text)
        chunk.metadata.update({"n": document.queued, "document_id": "spoofed"})
        await queue.put(ChunkItem(document, document.queued, chunk))
        document.queued += 1
    await queue.put(EndOfDocument(document, document.queued))


async def prefilled(owner: FakeOwner, documents: dict[str, list[str]]) -> ChunkQueue:
    """A queue already holding the documents' chunks (so batches do not depend on timing)."""
    queue = ChunkQueue(1024)
    for document_id, texts in documents.items():
        await produce(queue, doc(owner, document_id), texts)
    return queue


@contextlib.asynccontextmanager
async def running(
    model: FakeModel, queue: ChunkQueue, *, batch_size: int, idle: float = 0.01, in_flight: int = 2
) -> AsyncIterator[ChunkQueue]:
    writer = DocumentWriter(concurrency=2, backoff=NO_WAIT)
    consumer = EmbedConsumer(
        queue,
        model.embed,
        writer,
        batch_size=batch_size,
        idle_seconds=idle,
        max_in_flight=in_flight,
        backoff=NO_WAIT,
    )
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(writer.run())]
    try:
        yield queue
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_batches_span_documents_and_every_document_is_written_whole_once() -> None:
    owner = FakeOwner(expected=6)
    model = FakeModel()
    texts = {f"d{i}": [f"d{i}-{'x' * j}" for j in range(3)] for i in range(6)}
    async with running(model, await prefilled(owner, texts), batch_size=4, in_flight=1):
        await asyncio.wait_for(owner.done.wait(), 30)
    assert [len(b) for b in model.batches] == [4, 4, 4, 4, 2]  # 18 chunks, full batches across documents
    assert owner.outcomes == dict.fromkeys(texts, (Fate.INDEXED, ""))
    assert sorted(d for w in owner.writes for d in w) == sorted(texts)  # each document written once
    for document_id, document_texts in texts.items():
        vectors = owner.written[document_id]
        assert [v.id for v in vectors] == ["c0", "c1", "c2"]
        assert [v.values[0] for v in vectors] == [float(len(t)) for t in document_texts]
        assert [v.attributes["text"] for v in vectors] == document_texts
        assert [v.attributes["n"] for v in vectors] == [0, 1, 2]
        assert all("document_id" not in v.attributes for v in vectors)  # reserved key dropped


async def test_a_partial_batch_is_flushed_after_the_idle_timeout() -> None:
    owner = FakeOwner(expected=2)
    model = FakeModel()
    async with running(model, await prefilled(owner, {"a": ["one", "two"], "empty": []}), batch_size=100):
        await asyncio.wait_for(owner.done.wait(), 30)
    assert model.batches == [["one", "two"]]
    assert owner.outcomes == {"a": (Fate.INDEXED, ""), "empty": (Fate.INDEXED, "")}
    assert owner.written["empty"] == []


async def test_readers_block_when_the_queue_is_full() -> None:
    owner = FakeOwner(expected=1)
    model = FakeModel()
    model.gate = asyncio.Event()  # Triton stalls
    async with running(model, ChunkQueue(4), batch_size=2, in_flight=1) as queue:
        document = doc(owner, "big")
        producer = asyncio.create_task(produce(queue, document, [f"t{i}" for i in range(40)]))
        # The consumer takes one batch into its flush and one more waiting for the slot; then
        # the queue fills up to its bound and the producer waits on put().
        for _ in range(1000):
            if queue.qsize() == queue.maxsize:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert queue.qsize() == queue.maxsize == 4
        assert not producer.done()
        assert document.queued <= 2 + 2 + 4
        model.gate.set()
        await asyncio.wait_for(producer, 30)
        await asyncio.wait_for(owner.done.wait(), 30)
    assert owner.outcomes["big"][0] is Fate.INDEXED
    assert len(owner.written["big"]) == 40
    assert max(len(b) for b in model.batches) == 2


async def test_unavailable_is_retried_with_backoff_then_released_through_the_hook() -> None:
    owner = FakeOwner(expected=2)
    model = FakeModel()
    model.failures = [Unavailable("Triton down")] * 3  # every attempt of the first flush
    queue = await prefilled(owner, {"a": ["1", "2", "3"], "b": ["4"]})
    async with running(model, queue, batch_size=4, in_flight=1):
        await asyncio.wait_for(owner.done.wait(), 30)
    assert len(model.batches) == 3
    assert owner.outcomes == {
        "a": (Fate.RELEASED, "embedding: Triton down"),
        "b": (Fate.RELEASED, "embedding: Triton down"),
    }
    assert owner.writes == []


async def test_a_refused_text_fails_only_its_document() -> None:
    owner = FakeOwner(expected=3)
    model = FakeModel()
    model.refuse = "poison"
    queue = await prefilled(owner, {"a": ["fine", "also fine"], "bad": ["ok", "poison"], "c": ["good"]})
    async with running(model, queue, batch_size=8):
        await asyncio.wait_for(owner.done.wait(), 30)
    assert owner.outcomes["a"] == (Fate.INDEXED, "")
    assert owner.outcomes["c"] == (Fate.INDEXED, "")
    assert owner.outcomes["bad"][0] is Fate.FAILED
    assert "poison" in owner.outcomes["bad"][1]


async def test_chunks_of_finished_documents_are_dropped() -> None:
    owner = FakeOwner(expected=2)
    model = FakeModel()
    lost = doc(owner, "lost")
    queue = ChunkQueue(16)
    await produce(queue, lost, ["never embedded"])
    await produce(queue, doc(owner, "kept"), ["embedded"])
    await owner.finish([lost], Fate.LOST)  # e.g. a heartbeat reported its lease lost
    async with running(model, queue, batch_size=4):
        await asyncio.wait_for(owner.done.wait(), 30)
    assert model.batches == [["embedded"]]
    assert "lost" not in owner.written


async def test_writes_are_retried_and_stale_leases_are_reported_lost() -> None:
    owner = FakeOwner(expected=2, write_failures=[Unavailable("sink down")], stale={"s"})
    model = FakeModel()
    async with running(model, await prefilled(owner, {"s": ["x"], "w": ["y"]}), batch_size=4):
        await asyncio.wait_for(owner.done.wait(), 30)
    assert owner.outcomes["s"][0] is Fate.LOST
    assert owner.outcomes["w"] == (Fate.INDEXED, "")


def test_make_vector_keeps_metadata_and_cuts_long_text() -> None:
    chunk = document_pb2.Chunk(id="c1", text="é" * 10)
    chunk.metadata.update({"page": 3, "chunk_id": "spoofed"})
    vector = make_vector(chunk, [0.5, 0.25], max_text_bytes=5)
    assert vector.id == "c1"
    assert list(vector.values) == [0.5, 0.25]
    assert dict(vector.attributes) == {"page": 3, "text": "éé"}
    assert "text" not in make_vector(chunk, [0.5], max_text_bytes=0).attributes
    assert cut_utf8("abc", 2) == "ab"


def test_worker_settings() -> None:
    base = {"EMBEDDER_GATEWAY_ADDRESS": "127.0.0.1:50051"}
    assert not load_settings(WorkerSettings, {}).enabled
    settings = load_settings(WorkerSettings, {**base, "EMBEDDER_WORKER_PIPELINES": "a, b-2"})
    assert settings.pipeline_ids == ("a", "b-2")
    assert not settings.all_pipelines
    assert load_settings(WorkerSettings, {**base, "EMBEDDER_WORKER_PIPELINES": "*"}).all_pipelines
    operator = load_settings(
        WorkerSettings, {"HEVLAYER_PIPELINE_ID": "products", "HEVLAYER_GATEWAY_ADDRESS": "gw:50051"}
    )
    assert (operator.pipeline_ids, operator.gateway) == (("products",), "gw:50051")
    for env, variable in (
        ({"EMBEDDER_WORKER_PIPELINES": "a"}, "EMBEDDER_GATEWAY_ADDRESS"),
        ({**base, "EMBEDDER_WORKER_PIPELINES": "*,a"}, "EMBEDDER_WORKER_PIPELINES"),
        ({**base, "EMBEDDER_WORKER_PIPELINES": "Bad_Id"}, "EMBEDDER_WORKER_PIPELINES"),
        ({**base, "EMBEDDER_WORKER_CLAIM_STAGE": "pending"}, "EMBEDDER_WORKER_CLAIM_STAGE"),
        ({**base, "EMBEDDER_WORKER_BATCH_SIZE": "2000"}, "EMBEDDER_WORKER_BATCH_SIZE"),
        ({**base, "EMBEDDER_WORKER_QUEUE_BATCHES": "0"}, "EMBEDDER_WORKER_QUEUE_BATCHES"),
    ):
        with pytest.raises(ConfigError, match=variable):
            load_settings(WorkerSettings, env)


def test_worker_exclude_pipelines() -> None:
    env = {
        "EMBEDDER_GATEWAY_ADDRESS": "127.0.0.1:50051",
        "EMBEDDER_WORKER_PIPELINES": "*",
        "EMBEDDER_WORKER_EXCLUDE_PIPELINES": "solo, external-*",
    }
    settings = load_settings(WorkerSettings, env)
    assert settings.exclude_pipelines == ("solo", "external-*")
    names = ("solo", "solo-2", "external-node-1", "external", "products")
    assert [p for p in names if settings.works(p)] == ["solo-2", "external", "products"]
    assert load_settings(WorkerSettings, {**env, "EMBEDDER_WORKER_EXCLUDE_PIPELINES": ""}).works("solo")
    for bad in ("*", "Bad_Id", "ext*-", "-x*"):
        with pytest.raises(ConfigError, match="EMBEDDER_WORKER_EXCLUDE_PIPELINES"):
            load_settings(WorkerSettings, {**env, "EMBEDDER_WORKER_EXCLUDE_PIPELINES": bad})
