"""hevlayer.client.SyncClient: the same calls, blocking, from code without an event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from support.fakes.pipeline_service import Script, serve

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.client import AlreadyExists, NotFound, SyncClient
from hevlayer.common.errors import AlreadyExists as ServerAlreadyExists


@pytest.fixture
def served() -> Iterator[tuple[Script, str]]:
    """The scripted server on its own loop in a thread (the test itself is synchronous)."""
    script = Script()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, object] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        server, _, address = loop.run_until_complete(serve(script))
        holder["server"], holder["address"] = server, address
        started.set()
        loop.run_forever()
        loop.run_until_complete(server.stop(None))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield script, str(holder["address"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_blocking_calls_streams_and_errors(served: tuple[Script, str]) -> None:
    script, address = served
    with SyncClient(address) as client:
        created = client.pipelines.create(pb.Pipeline(id="sync"))
        assert created.id == "sync"
        assert [p.id for p in client.pipelines.list()] == ["sync"]
        assert [s.pending_count for s in client.pipelines.watch_status("sync")] == [3, 1, 0]
        with pytest.raises(NotFound):
            client.pipelines.get("missing")
        script.fail("CreatePipeline", ServerAlreadyExists("pipeline 'sync' exists"))
        with pytest.raises(AlreadyExists, match="exists"):
            client.pipelines.create(pb.Pipeline(id="sync"))
    assert script.calls["WatchPipelineStatus"] == 1


def test_a_stream_left_early_is_cancelled(served: tuple[Script, str]) -> None:
    _, address = served
    with SyncClient(address) as client:
        client.pipelines.create(pb.Pipeline(id="early"))
        statuses = client.pipelines.watch_status("early")
        assert next(statuses).pending_count == 3
        statuses.close()
        assert client.pipelines.get("early").id == "early"
