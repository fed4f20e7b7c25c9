"""Pipelines for a test: fresh ids and CreatePipeline through a gateway."""

from __future__ import annotations

import uuid
from typing import Any

from grpc import aio

from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc


def unique(prefix: str = "p") -> str:
    """A fresh pipeline id."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_pipeline(channel: aio.Channel, pipeline_id: str | None = None, **fields: Any) -> str:
    """Create a pipeline through the gateway (a fresh id unless given); its id."""
    pipeline_id = pipeline_id or unique()
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    await stub.CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id, **fields))
    )
    return pipeline_id
