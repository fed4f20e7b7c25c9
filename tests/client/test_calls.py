"""hevlayer.client against a real server on a real port: errors keep their rich status,
idempotent calls are retried and the others are not, deadlines and metadata apply."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from support.fakes.pipeline_service import Script, serve

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.client import (
    Client,
    ClientOptions,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    ServiceError,
    Unavailable,
    is_definite_failure,
)
from hevlayer.common.errors import InvalidArgument as ServerInvalidArgument
from hevlayer.common.errors import Unavailable as ServerUnavailable

FAST_RETRIES = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Script, str]]:
    script = Script()
    server, _, address = await serve(script)
    try:
        yield script, address
    finally:
        await server.stop(None)


async def test_an_idempotent_call_is_retried_until_it_succeeds(scripted: tuple[Script, str]) -> None:
    script, address = scripted
    async with Client.connect(address, ClientOptions(retry=FAST_RETRIES)) as client:
        await client.pipelines.create(pb.Pipeline(id="docs"))
        script.fail(
            "GetPipeline", ServerUnavailable("claimer restarting"), ServerUnavailable("claimer restarting")
        )
        pipeline = await client.pipelines.get("docs")
    assert pipeline.id == "docs"
    assert script.calls["GetPipeline"] == 3


async def test_retries_stop_after_max_attempts_with_the_last_error(scripted: tuple[Script, str]) -> None:
    script, address = scripted
    async with Client.connect(address, ClientOptions(retry=FAST_RETRIES)) as client:
        script.fail("ListPipelines", *[ServerUnavailable("down", retry_after=2.5)] * 5)
        with pytest.raises(Unavailable) as caught:
            await client.pipelines.list()
    assert script.calls["ListPipelines"] == 4
    assert caught.value.retry_after == 2.5
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


async def test_a_non_idempotent_call_is_never_repeated(scripted: tuple[Script, str]) -> None:
    script, address = scripted
    async with Client.connect(address, ClientOptions(retry=FAST_RETRIES)) as client:
        script.fail("CreatePipeline", ServerUnavailable("claimer restarting"))
        with pytest.raises(Unavailable):
            await client.pipelines.create(pb.Pipeline(id="docs"))
    assert script.calls["CreatePipeline"] == 1


async def test_an_error_keeps_its_field_violations_and_reason(scripted: tuple[Script, str]) -> None:
    script, address = scripted
    async with Client.connect(address) as client:
        script.fail("CreatePipeline", ServerInvalidArgument.field("pipeline.id", "must match [a-z0-9-]+"))
        with pytest.raises(InvalidArgument) as caught:
            await client.pipelines.create(pb.Pipeline(id="Bad Id"))
        with pytest.raises(NotFound):
            await client.pipelines.get("missing")
    error = caught.value
    assert error.message == "pipeline.id: must match [a-z0-9-]+"
    assert [(v.field, v.description) for v in error.violations] == [("pipeline.id", "must match [a-z0-9-]+")]
    assert error.reason == "INVALID_ARGUMENT"
    assert is_definite_failure(error)


async def test_a_deadline_applies_per_call_and_is_not_retried_blindly(scripted: tuple[Script, str]) -> None:
    script, address = scripted
    async with Client.connect(address, ClientOptions(timeouts={"CreatePipeline": 0.2})) as client:
        script.fail("CreatePipeline", 2.0)
        with pytest.raises(ServiceError) as caught:
            await client.pipelines.create(pb.Pipeline(id="slow"))
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert not is_definite_failure(caught.value)
        script.fail("GetPipeline", 2.0)
        with pytest.raises(ServiceError) as late:
            await client.pipelines.get("slow", timeout=0.2)
        assert late.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert script.calls["CreatePipeline"] == 1


async def test_metadata_goes_with_every_call(scripted: tuple[Script, str]) -> None:
    script, address = scripted
    options = ClientOptions(metadata=[("authorization", "Bearer t0ken"), ("x-team", "search")])
    async with Client.connect(address, options) as client:
        await client.pipelines.create(pb.Pipeline(id="a"))
        statuses = [s.pending_count async for s in client.pipelines.watch_status("a")]
    assert statuses == [3, 1, 0]
    assert all(
        m.get("authorization") == "Bearer t0ken" and m.get("x-team") == "search" for m in script.metadata
    )


async def test_list_follows_every_page(scripted: tuple[Script, str]) -> None:
    _, address = scripted
    async with Client.connect(address) as client:
        for n in range(5):
            await client.pipelines.create(pb.Pipeline(id=f"p{n}"))
        pipelines = await client.pipelines.list()
    assert [p.id for p in pipelines] == [f"p{n}" for n in range(5)]


async def test_update_delete_and_status(scripted: tuple[Script, str]) -> None:
    script, address = scripted
    async with Client.connect(address) as client:
        await client.pipelines.create(pb.Pipeline(id="p"))
        assert (await client.pipelines.set_paused("p", True)).paused
        assert (await client.pipelines.status("p")).pipeline_id == "p"
        await client.pipelines.delete("p")
        with pytest.raises(NotFound):
            await client.pipelines.delete("p")
    assert script.calls["DeletePipeline"] == 2


async def test_one_attempt_means_no_retries(scripted: tuple[Script, str]) -> None:
    script, address = scripted
    async with Client.connect(address, ClientOptions(retry=RetryPolicy(max_attempts=1))) as client:
        await client.pipelines.create(pb.Pipeline(id="once"))
        script.fail("GetPipeline", ServerUnavailable("claimer restarting"))
        with pytest.raises(Unavailable):
            await client.pipelines.get("once")
        assert (await client.pipelines.get("once")).id == "once"
    assert script.calls["GetPipeline"] == 2
