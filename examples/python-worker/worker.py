"""A hevlayer stager and GPU-style worker in Python, on :mod:`hevlayer.client`.

The same two roles as ``examples/node-worker`` and ``examples/go-client``
(docs/clients.md shows them side by side):

    python worker.py stage --gateway HOST:PORT --pipeline ID FILE...
    python worker.py work  --gateway HOST:PORT --embedder HOST:PORT --pipeline ID

``stage`` splits each file into chunks of about 800 characters and stages them
(one StageDocuments stream, one result per file in order). ``work`` claims
documents with StreamLeases (credits: how many it holds at once), reads their
chunks, embeds them through EmbeddingService, writes the vectors and lets the
gateway move each document to ``indexed``, heartbeating its leases meanwhile.
A document whose lease is lost is dropped; one the gateway rejects is moved to
``failed`` with the reason. Run it with the workspace's Python (``.venv/bin/python``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import struct_pb2

from hevlayer.client import (
    Chunk,
    Claim,
    Client,
    Document,
    DocumentVectors,
    Lease,
    ServiceError,
    StageOutcome,
    Vector,
    WriteOutcome,
)

CHUNK_CHARS = 800


def chunks_of(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """``text`` cut into pieces of at most ``size`` characters, at a line break when there is one."""
    pieces: list[str] = []
    while text:
        cut = len(text) if len(text) <= size else (text.rfind("\n", 0, size) + 1 or size)
        piece, text = text[:cut], text[cut:]
        if piece.strip():
            pieces.append(piece)
    return pieces


def document_of(path: Path) -> Document:
    """A file as a document: its name is the id, its pieces the chunks."""
    metadata = struct_pb2.Struct()
    metadata.update({"path": str(path)})
    pieces = chunks_of(path.read_text(errors="replace"))
    return Document(
        id=path.name,
        chunks=[Chunk(id=f"{path.name}-{n}", text=t, metadata=metadata) for n, t in enumerate(pieces)],
    )


async def stage(gateway: str, pipeline: str, files: Sequence[Path]) -> int:
    """Stage ``files``; 0 if every one was staged."""
    async with Client.connect(gateway) as client:
        results = await client.staging.stage(pipeline, (document_of(f) for f in files))
    rejected = 0
    for result in results:
        outcome = StageOutcome(result.outcome)
        detail = f": {result.error.message}" if outcome is StageOutcome.REJECTED else ""
        print(f"{result.document_id}: {outcome.name.lower()}{detail}")
        rejected += outcome is StageOutcome.REJECTED
    return 1 if rejected else 0


@dataclass
class Summary:
    """How the worker's documents ended."""

    indexed: int = 0
    failed: int = 0
    lost: int = 0


@dataclass
class Worker:
    """StreamLeases → ReadChunks → Embed → WriteVectors, one credit back per finished document."""

    gateway: Client
    embedder: Client
    claim: Claim
    credits: int = 16
    max_documents: int = 0
    idle_seconds: float = 10.0
    summary: Summary = field(default_factory=Summary)
    held: dict[str, Lease] = field(default_factory=dict)
    _returned: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    async def _credits(self, stop: asyncio.Event) -> AsyncIterator[int]:
        while not stop.is_set():
            get = asyncio.ensure_future(self._returned.get())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({get, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not get.done():
                get.cancel()
                return
            yield get.result()

    async def _heartbeat(self) -> None:
        interval = max(1.0, (self.claim.lease_seconds or 30) / 3)
        while True:
            await asyncio.sleep(interval)
            leases = list(self.held.values())
            if not leases:
                continue
            with contextlib.suppress(ServiceError):
                deadlines = await self.gateway.leases.heartbeat(self.claim, leases)
                for lease, deadline in zip(leases, deadlines, strict=True):
                    if deadline is None:  # lost: another worker may have it now
                        self.held.pop(lease.document_id, None)

    async def run(self) -> Summary:
        """Work until ``max_documents`` are finished or nothing came for ``idle_seconds``."""
        stop = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat())
        stream = self.gateway.leases.stream_leases(self.claim, self._credits(stop), self.credits)
        try:
            while not stop.is_set():
                try:
                    batch = await asyncio.wait_for(anext(stream), timeout=self.idle_seconds)
                except (TimeoutError, StopAsyncIteration):
                    break
                await self.process(batch)
                done = self.summary.indexed + self.summary.failed + self.summary.lost
                if self.max_documents and done >= self.max_documents:
                    break
                self._returned.put_nowait(len(batch))
        finally:
            stop.set()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await stream.aclose()
        return self.summary

    async def process(self, leases: Sequence[Lease]) -> None:
        """Read, embed and write one batch of leased documents."""
        for lease in leases:
            self.held[lease.document_id] = lease
        chunks: dict[str, list[Chunk]] = {lease.document_id: [] for lease in leases}
        async for response in self.gateway.staging.read_chunks(
            self.claim.pipeline_id,
            worker_id=self.claim.worker_id,
            stage=self.claim.claim_stage,
            leases=leases,
        ):
            if response.HasField("error"):  # the lease is gone, or the document was deleted
                chunks.pop(response.document_id, None)
                self.held.pop(response.document_id, None)
                self.summary.lost += 1
                continue
            chunks[response.document_id].extend(response.chunks)
        texts = [c.text for document in chunks.values() for c in document]
        vectors = iter(await self.embedder.embedding.embed(texts))
        writes = [
            DocumentVectors(
                self.held[document_id],
                [Vector(id=c.id, values=next(vectors), attributes=c.metadata) for c in document],
            )
            for document_id, document in chunks.items()
        ]
        results = await self.gateway.index.write_vectors(
            self.claim.pipeline_id, writes, worker_id=self.claim.worker_id, from_stage=self.claim.claim_stage
        )
        for result in results:
            lease = self.held.pop(result.document_id)
            if result.outcome is WriteOutcome.INDEXED:
                self.summary.indexed += 1
            elif result.outcome is WriteOutcome.STALE_LEASE:
                self.summary.lost += 1
            else:
                self.summary.failed += 1
                await self.gateway.leases.transition_claimed(self.claim, [lease], "failed", result.error)


async def work(args: argparse.Namespace) -> int:
    claim = Claim(
        args.pipeline,
        args.worker_id,
        from_stage=args.from_stage,
        claim_stage=args.claim_stage,
        lease_seconds=args.lease_seconds,
    )
    async with Client.connect(args.gateway) as gateway, Client.connect(args.embedder) as embedder:
        worker = Worker(
            gateway,
            embedder,
            claim,
            args.credits,
            max_documents=args.max_documents,
            idle_seconds=args.idle_seconds,
        )
        summary = await worker.run()
    print(f"indexed {summary.indexed}, failed {summary.failed}, lost {summary.lost}")
    return 1 if summary.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    staging = commands.add_parser("stage", help="stage files")
    staging.add_argument("files", nargs="+", type=Path)
    working = commands.add_parser("work", help="embed and index leased documents")
    working.add_argument("--embedder", required=True, help="an EmbeddingService address")
    working.add_argument("--worker-id", default=f"python-example-{os.getpid()}")
    working.add_argument("--from-stage", default="pending")
    working.add_argument("--claim-stage", default="embedding")
    working.add_argument("--lease-seconds", type=int, default=60)
    working.add_argument("--credits", type=int, default=16)
    working.add_argument("--max-documents", type=int, default=0, help="stop after this many (0: no limit)")
    working.add_argument(
        "--idle-seconds", type=float, default=10.0, help="stop when nothing comes for this long"
    )
    for sub in (staging, working):
        sub.add_argument("--gateway", default="127.0.0.1:50051")
        sub.add_argument("--pipeline", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "stage":
            return asyncio.run(stage(args.gateway, args.pipeline, args.files))
        return asyncio.run(work(args))
    except ServiceError as error:
        fields = "".join(f"\n  {v.field}: {v.description}" for v in error.violations)
        print(f"{error.code.name}: {error.message}{fields}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
