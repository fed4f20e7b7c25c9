"""The gateway's memory while one client streams WriteVectors (issue 14, bounded requests).

Starts PostgreSQL, SeaweedFS, a claimer and a gateway (Milvus Lite sink) as real
processes (``bench/staging.py``'s stack) and, through the gateway's public gRPC API,
streams in one WriteVectors call each:

* ``small``: one document of ``--small`` vectors (1,000) — written and indexed;
* ``large``: one document of ``--large`` vectors (100,000) — over
  ``GATEWAY_WRITE_MAX_DOCUMENT_BYTES``, so refused whole (DOCUMENT_TOO_LARGE) once the
  gateway has held that many bytes of it; the rest of its messages are read and dropped;
* ``many``: ``--many`` documents of ``--small`` vectors each in one stream — written in
  batches, so the stream's volume does not pile up either.

Every vector has ``--dim`` (384) float32 values and a short text attribute. While each
stream runs, the gateway's resident set size (VmRSS of ``/proc/PID/status``) is sampled
every 5 ms; the case's growth is its peak minus the RSS just before it. Goal: memory
stays flat — the large document's growth stays within a small factor of the small
one's, instead of growing with the document (before issue 14 the gateway held every
vector of a document as Python floats: about 32 bytes a value, 1.2 GB for 100,000 x 384).
``after`` is the RSS 2 s after the stream: Milvus Lite runs inside the gateway process
and keeps the rows it stores, so written vectors stay (the ``many`` case); what the
stream itself held is gone.

    .venv/bin/python bench/writevectors_memory.py [--small 1000] [--large 100000] [--many 20] [--dim 384]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from grpc import aio
from staging import running_stack

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.client.channel import open_channel

WORKER = "bench-worker"
CLAIM_STAGE = "embedding"
VECTORS_PER_MESSAGE = 100
OUTCOMES = {v: k for k, v in index_pb2.WriteOutcome.items()}


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Sampler:
    """Samples a process's RSS every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.samples += 1
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self.peak = rss_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))


@dataclass(frozen=True)
class Case:
    name: str
    documents: int
    vectors: int
    baseline_kib: int
    peak_kib: int
    after_kib: int
    """RSS 2 s after the stream ended."""
    seconds: float
    outcomes: dict[str, int]
    error: str

    @property
    def growth_kib(self) -> int:
        return max(self.peak_kib - self.baseline_kib, 0)


def template(dim: int) -> index_pb2.WriteVectorsRequest:
    """A message of VECTORS_PER_MESSAGE vectors (ids and lease set per message)."""
    message = index_pb2.WriteVectorsRequest(worker_id=WORKER, from_stage=CLAIM_STAGE)
    for i in range(VECTORS_PER_MESSAGE):
        vector = message.vectors.add(id=str(i), values=[((i * 31 + k) % 97) / 97.0 for k in range(dim)])
        vector.attributes.update({"text": f"chunk {i} of a benchmark document"})
    return message


async def requests(
    pipeline_id: str, documents: list[tuple[str, int]], vectors: int, base: index_pb2.WriteVectorsRequest
) -> AsyncIterator[index_pb2.WriteVectorsRequest]:
    """Each document's ``vectors`` vectors, VECTORS_PER_MESSAGE a message, built as sent."""
    for document_id, token in documents:
        for start in range(0, vectors, VECTORS_PER_MESSAGE):
            message = index_pb2.WriteVectorsRequest()
            message.CopyFrom(base)
            message.pipeline_id = pipeline_id
            message.lease.document_id = document_id
            message.lease.fencing_token = token
            count = min(VECTORS_PER_MESSAGE, vectors - start)
            del message.vectors[count:]
            for offset, vector in enumerate(message.vectors):
                vector.id = f"{document_id}-{start + offset}"
            message.end_of_document = start + count >= vectors
            yield message


STAGED_CHUNKS_MAX = 10_000
"""Most chunks a document may be staged with (GATEWAY_MAX_CHUNKS_PER_DOCUMENT's default)."""


async def prepare(
    channel: aio.Channel, pipeline_id: str, count: int, dim: int, chunks: int = 1
) -> list[tuple[str, int]]:
    """A pipeline of dimension ``dim`` with ``count`` documents of ``chunks`` chunks each (ids
    ``{document}-{n}``, what :func:`requests` sends vectors for) staged and claimed."""
    await pipeline_pb2_grpc.PipelineServiceStub(channel).CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id, dimension=dim))
    )
    documents = []
    for i in range(count):
        document = document_pb2.Document(id=f"doc-{i:04d}")
        for n in range(min(chunks, STAGED_CHUNKS_MAX)):
            document.chunks.add(id=f"{document.id}-{n}", text=f"d{i} c{n}")
        documents.append(document)

    async def stage_requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
        yield staging_pb2.StageDocumentsRequest(pipeline_id=pipeline_id, documents=documents)

    async for _ in staging_pb2_grpc.StagingServiceStub(channel).StageDocuments(stage_requests()):
        pass
    claimed = await lease_pb2_grpc.LeaseServiceStub(channel).ClaimDocuments(
        lease_pb2.ClaimDocumentsRequest(
            pipeline_id=pipeline_id,
            stage="pending",
            claim_stage=CLAIM_STAGE,
            limit=count,
            worker_id=WORKER,
            lease_seconds=3600,
        )
    )
    tokens = {lease.document_id: lease.fencing_token for lease in claimed.leases}
    return [(d.id, tokens[d.id]) for d in documents]


async def run_case(
    name: str,
    channel: aio.Channel,
    pid: int,
    dim: int,
    documents: int,
    vectors: int,
    base: index_pb2.WriteVectorsRequest,
) -> Case:
    pipeline_id = f"mem-{name}-{uuid.uuid4().hex[:6]}"
    leases = await prepare(channel, pipeline_id, documents, dim, vectors)
    await asyncio.sleep(1.0)  # let the gateway settle after staging
    baseline = rss_kib(pid)
    stub = index_pb2_grpc.IndexServiceStub(channel)
    started = time.perf_counter()
    with Sampler(pid) as sampler:
        response = await stub.WriteVectors(requests(pipeline_id, leases, vectors, base), timeout=1800)
    seconds = time.perf_counter() - started
    await asyncio.sleep(2.0)
    after = rss_kib(pid)
    outcomes: dict[str, int] = {}
    for result in response.results:
        key = OUTCOMES[result.outcome].removeprefix("WRITE_OUTCOME_").lower()
        outcomes[key] = outcomes.get(key, 0) + 1
    errors = [r.error.message for r in response.results if r.error.message]
    return Case(
        name,
        documents,
        documents * vectors,
        baseline,
        sampler.peak,
        after,
        seconds,
        outcomes,
        errors[0] if errors else "",
    )


async def measure(args: argparse.Namespace) -> None:
    base = template(args.dim)
    with running_stack() as stack:
        pid = stack.gateway.pid
        assert pid is not None
        channel = open_channel(stack.gateway_address)
        try:
            # Warm-up: the first write opens the sink and creates a collection.
            await run_case("warmup", channel, pid, args.dim, 1, VECTORS_PER_MESSAGE, base)
            cases = [
                await run_case("small", channel, pid, args.dim, 1, args.small, base),
                await run_case("large", channel, pid, args.dim, 1, args.large, base),
            ]
            if args.many:
                cases.append(await run_case("many", channel, pid, args.dim, args.many, args.small, base))
        finally:
            await channel.close()
    print(f"gateway RSS growth while one client streams WriteVectors ({args.dim} dims, float32)")
    header = ("case", "docs", "vectors", "base MiB", "peak MiB", "after MiB", "growth MiB", "s")
    print("{:<6} {:>5} {:>8} {:>9} {:>9} {:>10} {:>11} {:>6}  outcomes".format(*header))
    for case in cases:
        mib = [kib / 1024 for kib in (case.baseline_kib, case.peak_kib, case.after_kib, case.growth_kib)]
        print(
            f"{case.name:<6} {case.documents:>5} {case.vectors:>8} {mib[0]:>9.1f} {mib[1]:>9.1f} "
            f"{mib[2]:>10.1f} {mib[3]:>11.1f} {case.seconds:>6.1f}  {case.outcomes}"
        )
    small = max(cases[0].growth_kib, 1)
    for case in cases[1:]:
        print(f"growth ratio {case.name}/small: {case.growth_kib / small:.2f}")
    refusal = cases[1].error
    if refusal:
        print(f"large document: {refusal}")
    naive = args.large * args.dim * 32 / 2**20
    print(f"(the same document as Python floats would take about {naive:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=1000, help="vectors of the small document (1000)")
    parser.add_argument("--large", type=int, default=100_000, help="vectors of the large document (100000)")
    parser.add_argument("--many", type=int, default=20, help="documents of the many case (20; 0 skips it)")
    parser.add_argument("--dim", type=int, default=384)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
