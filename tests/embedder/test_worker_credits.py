"""How many documents a pipeline worker leases at once (in-process, fake gateway).

The worker aims at a chunk budget, not a document count: with many-chunk
documents it holds few of them, leaving the backlog pending for other workers
(and for KEDA's pending metric); with one-chunk documents it holds up to
``max_documents``. The fake gateway hands out one lease per credit, like the
claimer's StreamLeases, and records the most documents held at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client import Claim, Client, Lease
from hevlayer.embedder.chunk_queue import ChunkQueue
from hevlayer.embedder.inflight import ChunkItem, EndOfDocument, Fate, InFlightDocument
from hevlayer.embedder.pipeline_worker import PipelineWorker


@dataclass
class FakeGateway:
    """Pending documents of ``chunks`` chunks each; one lease per credit."""

    pending: list[str]
    chunks: int
    worker: PipelineWorker | None = None
    credits: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    """Documents the worker held after each batch of leases."""

    @property
    def leases(self) -> FakeGateway:
        """LeaseService and StagingService are both this fake."""
        return self

    @property
    def staging(self) -> FakeGateway:
        return self

    async def stream_leases(
        self, claim: Claim, credits: AsyncIterable[int], initial_credits: int
    ) -> AsyncIterator[list[Lease]]:
        self.credits.append(initial_credits)
        granted = initial_credits
        iterator = aiter(credits)
        while True:
            take, self.pending = self.pending[:granted], self.pending[granted:]
            granted -= len(take)
            if take:
                yield [Lease(d, 1, time.monotonic() + 60, 1, self.chunks) for d in take]
                assert self.worker is not None
                self.held.append(len(self.worker.held))
            try:
                more = await anext(iterator)
            except StopAsyncIteration:
                return
            self.credits.append(more)
            granted += more

    async def read_chunks(
        self, pipeline_id: str, *, worker_id: str, stage: str, leases: Sequence[InFlightDocument]
    ) -> AsyncIterator[staging_pb2.ReadChunksResponse]:
        for document in leases:
            chunks = [document_pb2.Chunk(id=f"c{i}", text="t") for i in range(self.chunks)]
            yield staging_pb2.ReadChunksResponse(
                document_id=document.document_id, chunks=chunks, end_of_document=True
            )

    async def heartbeat(self, claim: Claim, documents: Sequence[InFlightDocument]) -> list[float | None]:
        return [time.monotonic() + 60 for _ in documents]


async def run_worker(chunks: int, documents: int, *, budget: int, max_documents: int) -> FakeGateway:
    gateway = FakeGateway([f"d{i}" for i in range(documents)], chunks)
    queue = ChunkQueue(budget)
    worker = PipelineWorker(
        Claim("p", "w", "pending", "embedding", 60),
        Client.__new__(Client),
        queue,
        max_documents=max_documents,
        chunk_budget=budget,
        read_concurrency=1,
        read_documents=8,
    )
    worker._gateway = gateway  # type: ignore[assignment]
    gateway.worker = worker
    worker.start()
    finished = 0
    try:
        # the consumer's part: finish each document once its chunks are taken off the queue
        while finished < documents:
            item = await asyncio.wait_for(queue.get(), 10)
            if isinstance(item, EndOfDocument):
                await worker.finish([item.document], Fate.INDEXED)
                finished += 1
            else:
                assert isinstance(item, ChunkItem)
    finally:
        await worker.close("test over")
    assert not gateway.pending
    return gateway


async def test_many_chunk_documents_are_held_few_at_a_time() -> None:
    gateway = await run_worker(32, 300, budget=128, max_documents=100)
    # before any lease the mean is unknown: a sixteenth of the budget
    assert gateway.credits[0] == 8
    assert gateway.held[0] == 8
    # then 128 chunks / 32 per document = 4 documents held at most
    assert max(gateway.held[1:]) == 4
    assert sum(gateway.credits) <= 300 + 8


async def test_one_chunk_documents_are_held_up_to_max_documents() -> None:
    gateway = await run_worker(1, 300, budget=128, max_documents=100)
    assert gateway.credits[0] == 8
    assert max(gateway.held) == 100
