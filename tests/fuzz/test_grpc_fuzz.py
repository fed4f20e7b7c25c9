"""Fuzz every public RPC of the live gateway with messages generated from the proto descriptors.

The services are those the gateway lists through server reflection that belong to the public
``hevlayer.api`` packages; every method of each, unary and streaming, is driven with
``strategies.messages`` (valid, boundary and invalid values, mixed with the real ids, tokens and
leases of a pipeline made for the test). For every call:

- the status is never ``INTERNAL`` or ``UNKNOWN``, and no status message carries a Python
  traceback;
- a refused call (a non-OK status, or an OK answer whose every per-document result is a
  rejection) of a mutating RPC changes nothing: the pipeline, its stage counts and its documents
  (stage, fencing token, holder, content hash, chunk count, attempts) are the same afterwards.

The pipeline is named ``external-fuzz-*`` so that the suite's embedder worker leaves it alone:
only the fuzz moves its documents. ``FUZZ_EXAMPLES`` sets the examples per method (``make fuzz``
runs a longer campaign); the seed is fixed (``derandomize``) unless ``FUZZ_SEED`` is set, and a
failure prints the falsifying request.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import grpc
import pytest
from fuzz.strategies import Pools, messages
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, event, example, given, seed, settings
from hypothesis import strategies as st

import hevlayer.api
from hevlayer.api.auth.v1 import auth_pb2
from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.index.v1 import index_pb2, index_pb2_grpc
from hevlayer.api.lease.v1 import lease_pb2, lease_pb2_grpc
from hevlayer.api.pipeline.v1 import pipeline_pb2, pipeline_pb2_grpc
from hevlayer.api.staging.v1 import staging_pb2, staging_pb2_grpc
from hevlayer.devstack.testing import LiveSuite

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")
DIMENSION = 384  # all-MiniLM-L6-v2, the live suite's model
CALL_TIMEOUT = 20.0
SINK_ROWS = 100  # the index rows a snapshot reads (far more than the test's documents have chunks)
STREAM_RESPONSES = 3  # a server stream is read this far, then cancelled (watches never end)

# Services of hevlayer.api that only other services call: the gateway must not serve them.
INTERNAL_PACKAGES = ("hevlayer.api.claimer.", "hevlayer.api.embedding.", "hevlayer.api.summary.")
MUTATING = {
    "CreatePipeline",
    "UpdatePipeline",
    "DeletePipeline",
    "StageDocuments",
    "EnqueueDocuments",
    "DeleteDocuments",
    "ClaimDocuments",
    "HeartbeatLeases",
    "TransitionDocuments",
    "StreamLeases",
    "WriteVectors",
    "CreateToken",
    "RevokeToken",
}
REFUSED_OUTCOMES = ("REJECTED", "STALE_LEASE")
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', '.py", line ')


def _public_services() -> list[ServiceDescriptor]:
    for module in pkgutil.walk_packages(hevlayer.api.__path__, "hevlayer.api."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)
    pool = descriptor_pool.Default()
    found: list[ServiceDescriptor] = []
    for module in pkgutil.walk_packages(hevlayer.api.__path__, "hevlayer.api."):
        if not module.name.endswith("_pb2"):
            continue
        file = importlib.import_module(module.name).DESCRIPTOR
        for service in pool.FindFileByName(file.name).services_by_name.values():
            if not service.full_name.startswith(INTERNAL_PACKAGES):
                found.append(service)
    return sorted(found, key=lambda s: s.full_name)


SERVICES = _public_services()
METHODS = [method for service in SERVICES for method in service.methods]


def test_the_fuzzed_services_are_the_ones_the_gateway_serves(live_suite: LiveSuite) -> None:
    with grpc.insecure_channel(live_suite.gateway) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT)))
    served = {s.name for s in answer.list_services_response.service if s.name.startswith("hevlayer.api.")}
    assert served == {s.full_name for s in SERVICES}, (
        f"the gateway serves {sorted(served)}; the fuzz drives {[s.full_name for s in SERVICES]}"
    )


@dataclass
class Target:
    """A pipeline of the live suite with staged documents and one claimed lease."""

    channel: grpc.Channel
    pipeline_id: str
    worker_id: str
    documents: dict[str, list[str]] = field(default_factory=dict)
    """Document id -> its chunk ids, as staged."""
    tokens: list[int] = field(default_factory=list)

    def pools(self) -> Pools:
        chunk_ids = [c for chunks in self.documents.values() for c in chunks]
        strings = [
            self.pipeline_id,
            self.worker_id,
            "pending",
            "embedding",
            "indexed",
            "failed",
            *self.documents,
            *chunk_ids,
        ]
        good_vector = st.lists(st.floats(-1, 1, width=32), min_size=DIMENSION, max_size=DIMENSION)
        vectors = st.builds(
            lambda i, v: document_pb2.Vector(id=i, values=v), st.sampled_from(chunk_ids), good_vector
        )
        return Pools(
            strings=strings,
            tokens=list(self.tokens),
            by_field={
                # right-dimension vectors with real chunk ids (a whole document's, or a sample)
                "vectors": lambda: st.lists(vectors, min_size=1, max_size=3),
                "values": lambda: good_vector,
            },
        )

    def snapshot(self) -> tuple[Any, ...]:
        """What a refused call must leave as it was: the pipeline, its stage counts, its documents
        and its rows in the sink (what a query for any vector finds)."""
        pipelines = pipeline_pb2_grpc.PipelineServiceStub(self.channel)
        staging = staging_pb2_grpc.StagingServiceStub(self.channel)
        try:
            pipeline = pipelines.GetPipeline(
                pipeline_pb2.GetPipelineRequest(pipeline_id=self.pipeline_id), timeout=CALL_TIMEOUT
            ).pipeline
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return ("missing",)
            raise
        status = pipelines.GetPipelineStatus(
            pipeline_pb2.GetPipelineStatusRequest(pipeline_id=self.pipeline_id), timeout=CALL_TIMEOUT
        ).status
        counts = sorted(status.counts.items())
        documents = sorted(
            (d.document_id, d.stage, d.fencing_token, d.claimed_by, d.content_hash, d.chunk_count, d.attempts)
            for page in staging.ListDocuments(
                staging_pb2.ListDocumentsRequest(pipeline_id=self.pipeline_id), timeout=CALL_TIMEOUT
            )
            for d in page.documents
        )
        self.tokens = sorted({*self.tokens, *(d[2] for d in documents)})
        rows = sorted(
            (hit.document_id, hit.chunk_id)
            for hit in index_pb2_grpc.IndexServiceStub(self.channel)
            .Query(
                index_pb2.QueryRequest(
                    pipeline_id=self.pipeline_id,
                    vector=index_pb2.QueryVector(values=[DIMENSION**-0.5] * DIMENSION),
                    top_k=SINK_ROWS,
                ),
                timeout=CALL_TIMEOUT,
            )
            .hits
        )
        return (pipeline.SerializeToString(deterministic=True), counts, status.pending_count, documents, rows)


def _set_up(channel: grpc.Channel, prefix: str, target: Target | None = None) -> Target:
    """A new pipeline with three staged documents, the first claimed (or ``target``'s again)."""
    if target is None:
        target = Target(channel, f"{prefix}fuzz-{uuid4().hex[:8]}", f"fuzz-worker-{uuid4().hex[:4]}")
    pipeline_pb2_grpc.PipelineServiceStub(channel).CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(id=target.pipeline_id)),
        timeout=CALL_TIMEOUT,
    )
    documents = []
    for d in range(3):
        chunks = [f"d{d}-{c}" for c in range(d + 1)]
        target.documents[f"d{d}"] = chunks
        documents.append(
            document_pb2.Document(
                id=f"d{d}", chunks=[document_pb2.Chunk(id=c, text=f"text of {c}") for c in chunks]
            )
        )
    request = staging_pb2.StageDocumentsRequest(pipeline_id=target.pipeline_id, documents=documents)
    staged = list(
        staging_pb2_grpc.StagingServiceStub(channel).StageDocuments(iter([request]), timeout=CALL_TIMEOUT)
    )
    assert all(r.outcome == staging_pb2.STAGE_OUTCOME_STAGED for s in staged for r in s.results), staged
    lease_pb2_grpc.LeaseServiceStub(channel).ClaimDocuments(
        lease_pb2.ClaimDocumentsRequest(
            pipeline_id=target.pipeline_id,
            stage="pending",
            claim_stage="embedding",
            limit=1,
            worker_id=target.worker_id,
        ),
        timeout=CALL_TIMEOUT,
    )
    target.snapshot()
    return target


@pytest.fixture(scope="module")
def channel(live_suite: LiveSuite) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(live_suite.gateway, options=options) as ch:
        yield ch


def _call(channel: grpc.Channel, method: MethodDescriptor, requests: list[Message]) -> list[Message]:
    """Call ``method`` (any kind) with ``requests``; the responses read (a stream: the first few)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    serialize = type(requests[0]).SerializeToString
    deserialize = response_class.FromString
    if method.client_streaming and method.server_streaming:
        stream = channel.stream_stream(path, serialize, deserialize)(iter(requests), timeout=CALL_TIMEOUT)
    elif method.client_streaming:
        return [channel.stream_unary(path, serialize, deserialize)(iter(requests), timeout=CALL_TIMEOUT)]
    elif method.server_streaming:
        stream = channel.unary_stream(path, serialize, deserialize)(requests[0], timeout=CALL_TIMEOUT)
    else:
        return [channel.unary_unary(path, serialize, deserialize)(requests[0], timeout=CALL_TIMEOUT)]
    read: list[Message] = []
    for response in stream:
        read.append(response)
        if len(read) >= STREAM_RESPONSES:
            stream.cancel()
            break
    return read


def _all_refused(responses: list[Message]) -> bool:
    """True when every per-document result in the responses is a rejection (and there is one)."""
    outcomes = []
    for response in responses:
        results = getattr(response, "results", None)
        if results is None:
            return False
        for result in results:
            enum = result.DESCRIPTOR.fields_by_name["outcome"].enum_type
            outcomes.append(enum.values_by_number[result.outcome].name)
    return bool(outcomes) and all(o.endswith(REFUSED_OUTCOMES) for o in outcomes)


def _describe(requests: list[Message]) -> str:
    text = " | ".join(str(r) for r in requests)
    return text if len(text) < 4000 else text[:4000] + f"... ({len(text)} chars)"


def check_call(target: Target, method: MethodDescriptor, requests: list[Message]) -> None:
    mutating = method.name in MUTATING
    before = target.snapshot() if mutating else None
    code = grpc.StatusCode.OK
    details = ""
    responses: list[Message] = []
    try:
        responses = _call(target.channel, method, requests)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    event(f"status {code.name}")  # pytest --hypothesis-show-statistics shows how deep the fuzz got
    where = f"{method.full_name} with {_describe(requests)}"
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), f"{code}: {details}\n{where}"
    assert not any(m in details for m in TRACEBACK_MARKERS), f"a traceback reached the client: {details}"
    refused = code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) or _all_refused(responses)
    if mutating and refused:
        after = target.snapshot()
        assert after == before, f"a refused call ({code}: {details}) changed the pipeline\n{where}"
    elif mutating:
        target.snapshot()  # refresh the token pool after a call that changed something


def _requests(method: MethodDescriptor, pools: Pools) -> st.SearchStrategy[list[Message]]:
    one = messages(method.input_type, pools)
    if method.client_streaming:
        return st.lists(one, min_size=1, max_size=3)
    return one.map(lambda m: [m])


def _settings(test: Any) -> Any:
    configured = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=FUZZ_SEED is None,
        suppress_health_check=list(HealthCheck),
        database=None,
        print_blob=True,
    )(test)
    return seed(int(FUZZ_SEED))(configured) if FUZZ_SEED is not None else configured


# Regression examples: requests that once failed, by method (built against the test's pipeline).
REGRESSIONS: dict[str, list[Callable[[Target], list[Message]]]] = {
    # NUL in token_id reached PostgreSQL (which cannot store it) and came back INTERNAL.
    "hevlayer.api.auth.v1.TokenService.RevokeToken": [
        lambda target: [auth_pb2.RevokeTokenRequest(token_id="\x00")],
        lambda target: [auth_pb2.RevokeTokenRequest(token_id="tok\x00" + target.pipeline_id)],
    ],
    # The claimer refused the first (empty) `open` while the gateway was still relaying the
    # second: grpc-aio's request consumer turned the claimer's INVALID_ARGUMENT into INTERNAL
    # (grpc/grpc#36066); the gateway's forwarder now sends the messages with
    # hevlayer.client._requests.start_writer.
    "hevlayer.api.lease.v1.LeaseService.StreamLeases": [
        lambda target: [
            lease_pb2.StreamLeasesRequest(open=lease_pb2.StreamLeasesOpen()),
            lease_pb2.StreamLeasesRequest(open=lease_pb2.StreamLeasesOpen()),
        ],
    ],
}


def _method_param(method: MethodDescriptor) -> Any:
    return pytest.param(method, id=method.full_name.removeprefix("hevlayer.api."))


@pytest.mark.parametrize("method", [_method_param(m) for m in METHODS])
def test_fuzz_rpc(method: MethodDescriptor, channel: grpc.Channel, live_suite: LiveSuite) -> None:
    target = _set_up(channel, live_suite.external_prefix)

    def run(requests: list[Message]) -> None:
        if target.snapshot() == ("missing",):  # a fuzzed DeletePipeline succeeded: make it again
            _set_up(channel, live_suite.external_prefix, target)
        check_call(target, method, requests)

    test = given(requests=_requests(method, target.pools()))(run)
    for regression in REGRESSIONS.get(method.full_name, []):
        test = example(requests=regression(target))(test)
    _settings(test)()
