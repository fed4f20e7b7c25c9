"""One trace per document journey, across the gateway, claimer and embedder processes.

A document is staged into a new pipeline of the live suite (generated stubs over
grpc.aio, no client tracing: the gateway's StageDocuments span is the root) and
embedded by the suite's worker loop. Its journey must then be one trace in the span
file every service writes: staging (gateway) → ``document.process`` (embedder) →
claim, chunk read, Triton call, vector write (embedder) → ``document.index``
(gateway) → ``document.transition`` to indexed (claimer), every parent present.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from grpc import aio

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.common.telemetry import (
    DOCUMENT_CLAIM_SPAN,
    DOCUMENT_EMBED_SPAN,
    DOCUMENT_INDEX_SPAN,
    DOCUMENT_PROCESS_SPAN,
    DOCUMENT_READ_SPAN,
    DOCUMENT_TRANSITION_SPAN,
    DOCUMENT_WRITE_SPAN,
)
from hevlayer.devstack.testing import LiveSuite

STAGE_SPAN = "hevlayer.api.staging.v1.StagingService/StageDocuments"
INDEXED_WITHIN_SECONDS = 240.0
"""How long the worker loop gets to index the document (a wait, not an assertion)."""

Span = dict[str, Any]


def read_spans(path: Path) -> list[Span]:
    """Every complete line of the span file (a line being written is left for the next read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def describe(span: Span) -> str:
    return f"{span['service']}:{span['name']} (span {span['span_id']}, parent {span['parent_span_id']})"


def document_spans(spans: Iterable[Span], document_id: str, pipeline_id: str, name: str) -> list[Span]:
    return [
        s
        for s in spans
        if s["name"] == name
        and s["attributes"].get("hevlayer.document_id") == document_id
        and s["attributes"].get("hevlayer.pipeline_id", pipeline_id) == pipeline_id
    ]


def journey_complete(spans: list[Span], document_id: str, pipeline_id: str) -> bool:
    """The process span of the document has ended and its trace holds the claimer's move."""
    processes = document_spans(spans, document_id, pipeline_id, DOCUMENT_PROCESS_SPAN)
    if not processes:
        return False
    trace_id = processes[-1]["trace_id"]
    names = {s["name"] for s in spans if s["trace_id"] == trace_id}
    return {STAGE_SPAN, DOCUMENT_INDEX_SPAN, DOCUMENT_TRANSITION_SPAN, DOCUMENT_WRITE_SPAN} <= names


async def stage_one(channel: aio.Channel, pipeline_id: str, document_id: str) -> None:
    stub = staging_pb2_grpc.StagingServiceStub(channel)

    async def requests() -> AsyncIterator[staging_pb2.StageDocumentsRequest]:
        yield staging_pb2.StageDocumentsRequest(
            pipeline_id=pipeline_id,
            documents=[
                document_pb2.Document(
                    id=document_id,
                    chunks=[
                        document_pb2.Chunk(id="c0", text="A cat sits on the mat."),
                        document_pb2.Chunk(id="c1", text="The trace follows the document."),
                    ],
                )
            ],
        )

    results = [r async for response in stub.StageDocuments(requests()) for r in response.results]
    assert [(r.document_id, r.outcome) for r in results] == [
        (document_id, staging_pb2.STAGE_OUTCOME_STAGED)
    ], f"staging {document_id!r} failed: {results}"


async def wait_indexed(channel: aio.Channel, pipeline_id: str, document_id: str) -> None:
    stub = staging_pb2_grpc.StagingServiceStub(channel)
    deadline = asyncio.get_running_loop().time() + INDEXED_WITHIN_SECONDS
    state = None
    while asyncio.get_running_loop().time() < deadline:
        response = await stub.GetDocument(
            staging_pb2.GetDocumentRequest(pipeline_id=pipeline_id, document_id=document_id)
        )
        state = response.document
        if state.stage == "indexed":
            return
        assert state.stage != "failed", f"{document_id!r} failed: {state.last_error}"
        await asyncio.sleep(0.5)
    pytest.fail(f"{document_id!r} was not indexed within {INDEXED_WITHIN_SECONDS} s; last state: {state}")


async def test_a_documents_journey_is_one_trace(live_suite: LiveSuite) -> None:
    pipeline_id = f"trace-{uuid4().hex[:6]}"
    document_id = f"doc-{uuid4().hex[:8]}"
    async with aio.insecure_channel(live_suite.gateway) as channel:
        await pipeline_pb2_grpc.PipelineServiceStub(channel).CreatePipeline(
            pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=pipeline_id))
        )
        try:
            await stage_one(channel, pipeline_id, document_id)
            await wait_indexed(channel, pipeline_id, document_id)
            # The spans of the last steps are written as their calls return: wait for them.
            deadline = asyncio.get_running_loop().time() + 30
            spans = read_spans(live_suite.traces)
            while not journey_complete(spans, document_id, pipeline_id):
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.2)
                spans = read_spans(live_suite.traces)
        finally:
            await pipeline_pb2_grpc.PipelineServiceStub(channel).DeletePipeline(
                pipeline_pb2.DeletePipelineRequest(pipeline_id=pipeline_id)
            )

    processes = document_spans(spans, document_id, pipeline_id, DOCUMENT_PROCESS_SPAN)
    assert len(processes) == 1, (
        f"expected one {DOCUMENT_PROCESS_SPAN} span of {document_id!r} (one lease), got "
        f"{[describe(s) for s in processes]}; embedder log:\n{live_suite.log('embedder')}"
    )
    process = processes[0]
    trace_id = process["trace_id"]
    in_trace = [s for s in spans if s["trace_id"] == trace_id]
    by_id = {s["span_id"]: s for s in in_trace}
    listing = "\n".join(describe(s) for s in in_trace)

    def one(name: str, service: str) -> Span:
        found = [s for s in in_trace if s["name"] == name and s["service"] == service]
        assert len(found) == 1, f"expected one {service}:{name} span in trace {trace_id}, got:\n{listing}"
        return found[0]

    def assert_child(child: Span, parent: Span) -> None:
        assert child["parent_span_id"] == parent["span_id"], (
            f"{describe(child)} should be a child of {describe(parent)} in trace {trace_id}:\n{listing}"
        )

    # Staging: the gateway's StageDocuments span starts the trace (the client sent no context).
    staging = one(STAGE_SPAN, "gateway")
    assert staging["parent_span_id"] is None, f"the staging span {describe(staging)} should be the root"
    assert process["service"] == "embedder", describe(process)
    assert_child(process, staging)

    # The worker's steps for the document: claim, chunk read, Triton call(s), vector write.
    claim = one(DOCUMENT_CLAIM_SPAN, "embedder")
    read = one(DOCUMENT_READ_SPAN, "embedder")
    write = one(DOCUMENT_WRITE_SPAN, "embedder")
    embeds = [s for s in in_trace if s["name"] == DOCUMENT_EMBED_SPAN and s["service"] == "embedder"]
    assert embeds, f"no {DOCUMENT_EMBED_SPAN} span (the Triton call) in trace {trace_id}:\n{listing}"
    for span in (claim, read, write, *embeds):
        assert_child(span, process)
        assert span["attributes"]["hevlayer.document_id"] == document_id, describe(span)
        assert span["status"] != "ERROR", f"{describe(span)} failed: {span}"
    assert sum(s["attributes"]["hevlayer.chunks"] for s in embeds) == 2, (
        f"the {DOCUMENT_EMBED_SPAN} spans should account for the document's 2 chunks: {embeds}"
    )
    assert read["attributes"]["hevlayer.chunks"] == 2, f"{DOCUMENT_READ_SPAN}: {read}"

    # The write continues in the gateway (document.index) and the claimer (move to indexed).
    index = one(DOCUMENT_INDEX_SPAN, "gateway")
    assert_child(index, write)
    assert index["attributes"]["hevlayer.outcome"] == "indexed", f"{DOCUMENT_INDEX_SPAN}: {index}"
    transition = one(DOCUMENT_TRANSITION_SPAN, "claimer")
    assert_child(transition, index)
    assert transition["attributes"]["hevlayer.to_stage"] == "indexed", (
        f"{DOCUMENT_TRANSITION_SPAN}: {transition}"
    )
    assert transition["attributes"]["hevlayer.outcome"] == "moved", (
        f"{DOCUMENT_TRANSITION_SPAN}: {transition}"
    )
    assert process["attributes"]["hevlayer.outcome"] == "indexed", f"{DOCUMENT_PROCESS_SPAN}: {process}"

    # The whole trace is connected: every span's parent is in it, up to the one root.
    for span in in_trace:
        seen = {span["span_id"]}
        node = span
        while node["parent_span_id"] is not None:
            parent = by_id.get(node["parent_span_id"])
            assert parent is not None, (
                f"{describe(node)} (on the way up from {describe(span)}) names a parent that is not "
                f"in trace {trace_id}:\n{listing}"
            )
            assert parent["span_id"] not in seen, f"a parent cycle through {describe(parent)}"
            seen.add(parent["span_id"])
            node = parent
        assert node is staging, f"{describe(span)} leads up to {describe(node)}, not to the staging span"

    # Spans of all three processes.
    services = {s["service"] for s in in_trace}
    assert {"gateway", "claimer", "embedder"} <= services, (
        f"trace {trace_id} should hold spans of the gateway, claimer and embedder, has {sorted(services)}"
    )
    # The batch calls are reachable from the document's spans through links.
    for span in (read, write, index, transition):
        assert span["links"], f"{describe(span)} should link to the span of its batch call"
