"""Failure model of the slice: PostgreSQL unreachable, claimer down, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.processes import start_claimer, start_gateway
from support.stacks import SliceStack

from hevlayer.api.pipeline.v1 import pipeline_pb2 as pb
from hevlayer.api.pipeline.v1 import pipeline_pb2_grpc
from hevlayer.client.channel import open_channel
from hevlayer.common.errors import status_from_rpc_error
from hevlayer.devstack.ports import free_port
from hevlayer.devstack.testing import claimer_metadata


def _retry_delay(error: aio.AioRpcError) -> float | None:
    for detail in status_from_rpc_error(error).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToMilliseconds()) / 1000
    return None


async def _wait_health(address: str, expected: int, timeout: float = 20) -> None:
    async with aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == expected:
                    return
            except aio.AioRpcError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"{address} never reported {expected}")
            await asyncio.sleep(0.1)


async def test_postgres_unreachable_is_unavailable_with_retry_info(tmp_path: Path) -> None:
    dead = f"postgresql://hevlayer:hevlayer@127.0.0.1:{free_port()}/hevlayer"
    traces = tmp_path / "traces.jsonl"
    claimer, claimer_address, _ = start_claimer(dead, tmp_path, traces)
    gateway, gateway_address, _ = start_gateway(claimer_address, tmp_path, traces)
    try:
        await _wait_health(claimer_address, health_pb2.HealthCheckResponse.NOT_SERVING)
        # The gateway answers, but is not ready: its claimer is not (tests/gateway/test_gateway_readiness.py).
        await _wait_health(gateway_address, health_pb2.HealthCheckResponse.NOT_SERVING)
        for address in (claimer_address, gateway_address):
            async with open_channel(address, metadata=claimer_metadata()) as channel:
                stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
                with pytest.raises(aio.AioRpcError) as caught:
                    await stub.CreatePipeline(
                        pb.CreatePipelineRequest(pipeline=pb.Pipeline(id="never-written")), timeout=20
                    )
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "PostgreSQL" in (caught.value.details() or "")
                delay = _retry_delay(caught.value)
                assert delay is not None
                assert delay > 0
        assert claimer.running, claimer.log_tail()
    finally:
        gateway.stop()
        claimer.stop()


async def test_gateway_without_claimer_is_unavailable(tmp_path: Path) -> None:
    gateway, gateway_address, _ = start_gateway(f"127.0.0.1:{free_port()}", tmp_path, tmp_path / "t.jsonl")
    try:
        await _wait_health(gateway_address, health_pb2.HealthCheckResponse.NOT_SERVING)
        async with open_channel(gateway_address) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            with pytest.raises(aio.AioRpcError) as caught:
                await stub.GetPipeline(pb.GetPipelineRequest(pipeline_id="anything"), timeout=20)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gateway.stop()


async def test_claimer_recovers_when_postgres_appears_later(tmp_path: Path, slice_stack: SliceStack) -> None:
    """A claimer started before its database is reachable turns SERVING once it is."""
    # Same server, but a database that does not exist yet: connection fails until created.
    import asyncpg

    name = f"late_{uuid.uuid4().hex[:8]}"
    base = slice_stack.database_url.rsplit("/", 1)[0]
    claimer, claimer_address, _ = start_claimer(f"{base}/{name}", tmp_path, tmp_path / "t.jsonl")
    try:
        await _wait_health(claimer_address, health_pb2.HealthCheckResponse.NOT_SERVING)
        conn = await asyncpg.connect(slice_stack.database_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        await _wait_health(claimer_address, health_pb2.HealthCheckResponse.SERVING, timeout=30)
        async with open_channel(claimer_address, metadata=claimer_metadata()) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            created = await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id="late")))
            assert created.pipeline.id == "late"
    finally:
        claimer.stop()


async def test_sigterm_drains_open_streams_and_exits_cleanly(tmp_path: Path, slice_stack: SliceStack) -> None:
    traces = tmp_path / "t.jsonl"
    claimer, claimer_address, _ = start_claimer(slice_stack.database_url, tmp_path, traces)
    try:
        claimer.wait_ready(timeout=60)
        async with open_channel(claimer_address, metadata=claimer_metadata()) as channel:
            stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
            pid = f"drain-{uuid.uuid4().hex[:8]}"
            await stub.CreatePipeline(pb.CreatePipelineRequest(pipeline=pb.Pipeline(id=pid)))
            watch = stub.WatchPipelineStatus(pb.WatchPipelineStatusRequest(pipeline_id=pid))
            first = await asyncio.wait_for(watch.read(), 10)
            assert first.status.pipeline_id == pid
            assert claimer.pid is not None
            import os

            os.kill(claimer.pid, signal.SIGTERM)
            # The open stream ends instead of hanging, and the process exits 0.
            end = await asyncio.wait_for(watch.read(), 15)
            assert end is aio.EOF
            assert await asyncio.wait_for(watch.code(), 5) == grpc.StatusCode.OK
        returncode = await asyncio.to_thread(claimer.wait, 15)
        assert returncode == 0, claimer.log_tail()
        assert "claimer stopped" in claimer.log_path.read_text()
    finally:
        claimer.stop()
