"""Fenced sink writes (issue 15, deliverable 1; docs/reliability.md, "Fenced sink writes").

A writer that lost its lease can never leave rows on a document that a newer holder
indexed. The gateway's write path (:class:`VectorWriter`) runs in this process against
the real claimer (lease checks, claims, the move to indexed) and each sink, as
test_sink_contract.py builds them: Milvus Lite on a temporary file, Milvus over gRPC
(Milvus Lite's server mode in a child process) and Turbopuffer (the real client against
the local fake of its HTTP API). Writer 1 is paused by a hook at a chosen step (no sleep
decides the order): the test resumes it only after its lease expired and writer 2
claimed, wrote and indexed the document.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from support.fakes.turbopuffer import FakeTurbopufferThread
from support.leases import claim
from support.milvus_lite import MilvusLiteServer
from support.pipelines import create_pipeline
from support.polling import eventually
from support.stacks import GatewayStack
from support.staging import document, get_document, stage
from support.vectors import DIM, embed

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.client.channel import open_channel
from hevlayer.common.errors import FailedPrecondition
from hevlayer.devstack.testing import claimer_metadata
from hevlayer.gateway.claimer_client import ClaimerClient, PipelineInfo
from hevlayer.gateway.indexing import DocumentVectors, VectorWriter, WriteOutcome
from hevlayer.gateway.sinks import Row, Sink, SinkKind, SinkPool
from hevlayer.gateway.sinks.settings import SinkSettings

DOC = "contested"
CHUNKS = [f"{DOC}-0", f"{DOC}-1"]


# Each sink kind, and the Sink value of a pipeline created on it.
SINKS = {
    SinkKind.MILVUS_LITE: pipeline_pb2.SINK_MILVUS_LITE,
    SinkKind.MILVUS: pipeline_pb2.SINK_MILVUS,
    SinkKind.TURBOPUFFER: pipeline_pb2.SINK_TURBOPUFFER,
}


@pytest.fixture(params=list(SINKS), ids=[kind.value for kind in SINKS])
async def sinks(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SinkPool]:
    """The gateway's sink pool with the parameter's kind as its default (and only) sink."""
    kind: SinkKind = request.param
    if kind is SinkKind.MILVUS_LITE:
        settings = SinkSettings(default_sink=kind, milvus_lite_path=str(tmp_path / "vectors.db"))
    elif kind is SinkKind.MILVUS:
        server: MilvusLiteServer = request.getfixturevalue("milvus_server")
        settings = SinkSettings(default_sink=kind, milvus_uri=server.uri)
    else:
        fake: FakeTurbopufferThread = request.getfixturevalue("turbopuffer_server")
        settings = SinkSettings(
            default_sink=kind,
            turbopuffer_api_key=fake.fake.api_key,
            turbopuffer_base_url=fake.fake.base_url,
            turbopuffer_max_retries=0,
        )
    settings.validate()
    pool = SinkPool(settings)
    yield pool
    await pool.close()


@pytest.fixture
async def claimer(gateway_stack: GatewayStack) -> AsyncIterator[ClaimerClient]:
    channel = open_channel(gateway_stack.claimer_address, metadata=claimer_metadata())
    yield ClaimerClient(channel, timeout=30)
    await channel.close()


class Pause:
    """Holds the first call of an async method until released."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    def around(self, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def paused(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                self.reached.set()
                await self.release.wait()
            return await method(*args, **kwargs)

        return paused


def rows(writer: str) -> list[Row]:
    # Writer 1's vectors are the ones a query for "needle" finds first, were they visible.
    text = "needle" if writer == "1" else "haystack"
    return [Row(chunk, embed(f"{text} {chunk}"), {"writer": writer}) for chunk in CHUNKS]


async def setup(channel: aio.Channel, claimer: ClaimerClient, sinks: SinkPool) -> tuple[PipelineInfo, int]:
    """A pipeline on the pool's sink with the document staged and claimed by writer 1 (for ten
    minutes)."""
    pid = await create_pipeline(channel, dimension=DIM, sink=SINKS[sinks.resolve()])
    await stage(channel, pid, [document(DOC, chunks=len(CHUNKS))])
    first = await claim(channel, pid, worker="writer-1", lease_seconds=600)
    return await claimer.pipeline(pid), first[DOC]


async def take_over(channel: aio.Channel, writer: VectorWriter, pipeline: PipelineInfo, token: int) -> int:
    """Writer 1's lease expires (a heartbeat shortens it to one second, as if writer 1 had
    stopped heartbeating); writer 2 claims the document once it has, writes and indexes it."""
    response = await lease_pb2_grpc.LeaseServiceStub(channel).HeartbeatLeases(
        lease_pb2.HeartbeatLeasesRequest(
            pipeline_id=pipeline.id,
            stage="embedding",
            worker_id="writer-1",
            leases=[document_pb2.LeaseRef(document_id=DOC, fencing_token=token)],
            lease_seconds=1,
        )
    )
    assert [result.extended for result in response.results] == [True]
    second: dict[str, int] = {}

    async def claimed() -> bool:
        second.update(await claim(channel, pipeline.id, worker="writer-2"))
        return bool(second)

    await eventually(claimed, timeout=60, what="writer 1's lease to expire")
    [outcome] = await writer.write(
        pipeline, [DocumentVectors(DOC, second[DOC], "writer-2", "embedding", rows("2"))]
    )
    assert outcome.outcome == "indexed", outcome
    return second[DOC]


async def index_of(sink: Sink, pipeline: PipelineInfo) -> list[tuple[str, str, int]]:
    """What a query of the document returns: (chunk id, writer, fencing token) of each hit."""
    hits = await sink.query(pipeline.target_namespace, embed(f"needle {CHUNKS[0]}"), 10, {"document_id": DOC})
    return sorted((hit.chunk_id, str(hit.attributes["writer"]), hit.fencing_token) for hit in hits)


def assert_stale(outcome: WriteOutcome) -> None:
    assert outcome.outcome == "stale_lease", outcome
    assert isinstance(outcome.error, FailedPrecondition)
    assert outcome.error.reason == "STALE_LEASE"


@dataclass
class PausedWrite:
    """Writer 1's write of the document (a task), held by ``pause`` at a chosen step."""

    pipeline: PipelineInfo
    token: int
    writer: VectorWriter
    sink: Sink
    pause: Pause
    task: asyncio.Task[list[WriteOutcome]]

    async def resume_stale(self, newer: int) -> None:
        """Let writer 1 go on: its write is refused as stale and the index keeps only writer 2's
        rows (fencing token ``newer``)."""
        self.pause.release.set()
        [outcome] = await self.task
        assert_stale(outcome)
        assert await index_of(self.sink, self.pipeline) == [(chunk, "2", newer) for chunk in CHUNKS]
        assert await self.sink.count(self.pipeline.target_namespace, DOC) == len(CHUNKS)


async def paused_write(
    channel: aio.Channel,
    claimer: ClaimerClient,
    sinks: SinkPool,
    monkeypatch: pytest.MonkeyPatch,
    step: Callable[[Sink], tuple[object, str]],
) -> PausedWrite:
    """Start writer 1's write and wait until it reaches ``step(sink)`` (an object and the name
    of its async method), where it is held."""
    pipeline, token = await setup(channel, claimer, sinks)
    assert pipeline.sink == sinks.resolve().value
    writer = VectorWriter(claimer, sinks)
    sink = await sinks.get()
    pause = Pause()
    owner, name = step(sink)
    monkeypatch.setattr(owner, name, pause.around(getattr(owner, name)))
    task = asyncio.create_task(
        writer.write(pipeline, [DocumentVectors(DOC, token, "writer-1", "embedding", rows("1"))])
    )
    await pause.reached.wait()
    return PausedWrite(pipeline, token, writer, sink, pause, task)


async def test_a_writer_paused_before_its_sink_write_leaves_nothing(
    channel: aio.Channel, claimer: ClaimerClient, sinks: SinkPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writer 1 passes the lease check, then stops right before the sink write.
    first = await paused_write(channel, claimer, sinks, monkeypatch, lambda sink: (sink, "replace_documents"))
    newer = await take_over(channel, first.writer, first.pipeline, first.token)
    assert newer > first.token
    assert await index_of(first.sink, first.pipeline) == [(chunk, "2", newer) for chunk in CHUNKS]

    # Writer 1 resumes: its write reaches the sink after writer 2's.
    await first.resume_stale(newer)
    assert (await get_document(channel, first.pipeline.id, DOC)).stage == "indexed"


async def test_a_writer_paused_after_its_sink_write_leaves_nothing(
    channel: aio.Channel, claimer: ClaimerClient, sinks: SinkPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writer 1 writes its rows, then stops before the move to indexed.
    first = await paused_write(channel, claimer, sinks, monkeypatch, lambda _: (claimer, "transition"))
    assert await index_of(first.sink, first.pipeline) == [(chunk, "1", first.token) for chunk in CHUNKS]
    newer = await take_over(channel, first.writer, first.pipeline, first.token)

    await first.resume_stale(newer)
