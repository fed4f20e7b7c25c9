"""The seed's REST routes, beside gRPC on the gateway's HTTP address.

Each route parses JSON into the same values the gRPC adapters build and
calls the same core (or the claimer through the same client); errors are
the same :class:`~hevlayer.common.errors.ServiceError` values, mapped to
HTTP statuses in one place (:func:`http_status`).

| route | core / claimer call |
|---|---|
| ``POST /v2/pipelines`` | PipelineService.CreatePipeline |
| ``PUT /v2/pipelines/{id}/documents/{doc_id}`` | staging: Stager.stage |
| ``GET /v2/pipelines/{id}/status`` | PipelineService.GetPipelineStatus |
| ``POST /v2/pipelines/{id}/claim`` | LeaseService.ClaimDocuments |
| ``POST /v2/pipelines/{id}/documents/heartbeat`` | LeaseService.HeartbeatLeases |
| ``POST /v2/pipelines/{id}/documents/stage`` | LeaseService.TransitionDocuments, or     |
|                                             | (create_missing) DocumentState.EnqueueIds |
| ``GET /v2/pipelines/{id}/documents/{doc_id}/chunks`` | staging: ChunkReader.read |
| ``PUT /v2/pipelines/{id}/documents/{doc_id}/vectors`` | indexing: VectorWriter.write |
| ``POST /v2/pipelines/{id}/query`` | indexing: Searcher.query (IndexService.Query) |
| ``GET /v2/metrics`` | the gateway's metrics + ``layer_pipeline_stage_count`` |
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hevlayer.api.document.v1 import document_pb2
from hevlayer.api.lease.v1 import lease_pb2
from hevlayer.api.pipeline.v1 import pipeline_pb2
from hevlayer.api.staging.v1 import staging_pb2
from hevlayer.client.methods import INDEX_SERVICE, LEASE_SERVICE, PIPELINE_SERVICE, STAGING_SERVICE
from hevlayer.client.staging import check_columns_understood
from hevlayer.common import metrics
from hevlayer.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Violation,
)
from hevlayer.gateway.claimer_client import ClaimerClient
from hevlayer.gateway.convert import (
    METRIC_VALUES,
    QUEUE_VALUES,
    SINK_VALUES,
    TRANSITION_NAMES,
    chunk_json,
    lease_json,
    pipeline_json,
    python_to_struct,
    timestamp_json,
)
from hevlayer.gateway.indexing import DocumentVectors, Query, Searcher, VectorWriter
from hevlayer.gateway.openapi import openapi_document
from hevlayer.gateway.sinks import JSONValue, Row
from hevlayer.gateway.staging import ChunkReader, Stager

log = logging.getLogger("hevlayer.gateway.rest")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# UNAVAILABLE from these dependencies is a bad gateway (502); from the
# claimer (PostgreSQL) it is a 500, as the seed's failure model says.
UPSTREAM_REASONS = frozenset({"SINK_UNAVAILABLE", "EMBEDDER_UNAVAILABLE", "CHUNK_STORE_UNAVAILABLE"})

_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status(error: ServiceError) -> int:
    """The HTTP status of an error: the one mapping from gRPC codes.

    400 INVALID_ARGUMENT/OUT_OF_RANGE, 404 NOT_FOUND, 409 ALREADY_EXISTS /
    FAILED_PRECONDITION / ABORTED, 502 UNAVAILABLE from a sink, S3 or the
    embedder, 500 UNAVAILABLE from the claimer (PostgreSQL) and INTERNAL,
    504 DEADLINE_EXCEEDED.
    """
    if error.code is grpc.StatusCode.UNAVAILABLE and error.reason in UPSTREAM_REASONS:
        return 502
    return _STATUS.get(error.code, 500)


def error_response(error: ServiceError, status: int | None = None) -> web.Response:
    """The JSON error body of ``error`` with its HTTP status (``status``: another one) and
    Retry-After."""
    status = status or http_status(error)
    body: dict[str, Any] = {
        "code": status,
        "status": error.code.name,
        "message": error.message,
        "reason": error.reason,
    }
    if error.violations:
        body["field_violations"] = [
            {"field": v.field, "description": v.description} for v in error.violations
        ]
    if error.metadata:
        body["metadata"] = dict(error.metadata)
    headers = {}
    if error.retry_after is not None:
        body["retry_after_seconds"] = error.retry_after
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return web.json_response({"error": body}, status=status, headers=headers)


def _handler(function: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await function(request)
        except ServiceError as error:
            return error_response(error)
        except web.HTTPRequestEntityTooLarge:
            return error_response(body_too_large(request.client_max_size), status=413)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("REST %s %s failed", request.method, request.path)
            return error_response(ServiceError("internal error; see the gateway log"))

    wrapped.__name__ = function.__name__
    wrapped.__doc__ = function.__doc__
    return wrapped


# -- JSON body helpers -------------------------------------------------------------------------


def body_too_large(limit: int) -> ResourceExhausted:
    """The error of a request body over ``limit`` bytes (HEVLAYER_HTTP_MAX_BODY_BYTES): 413."""
    description = f"is larger than the gateway accepts ({limit} bytes, HEVLAYER_HTTP_MAX_BODY_BYTES)"
    return ResourceExhausted(
        f"body: {description}; send fewer documents or vectors per request",
        reason="BODY_TOO_LARGE",
        violations=[Violation("body", description)],
        metadata={"max_body_bytes": str(limit)},
    )


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; INVALID_ARGUMENT naming ``body`` otherwise."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument.field("body", f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument.field("body", "must be a JSON object")
    return value


def get_str(body: Mapping[str, Any], key: str, default: str = "", *, required: bool = False) -> str:
    """A string field."""
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidArgument.field(key, "is required")
        return default
    if not isinstance(value, str):
        raise InvalidArgument.field(key, f"must be a string, got {type(value).__name__}")
    if required and not value:
        raise InvalidArgument.field(key, "is required")
    return value


UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


def get_int(
    body: Mapping[str, Any], key: str, default: int = 0, *, minimum: int = 0, maximum: int = UINT32_MAX
) -> int:
    """A non-negative integer field, at most ``maximum`` (the proto field's range: uint32 unless named)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidArgument.field(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidArgument.field(key, f"must be >= {minimum}")
    if value > maximum:
        raise InvalidArgument.field(key, f"must be <= {maximum}")
    return value


def get_bool(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A boolean field."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidArgument.field(key, f"must be a boolean, got {value!r}")
    return value


def get_str_list(body: Mapping[str, Any], key: str, *, required: bool = False) -> list[str]:
    """A list of strings."""
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidArgument.field(key, "is required")
        return []
    if not isinstance(value, list):
        raise InvalidArgument.field(key, "must be a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidArgument.field(f"{key}[{index}]", "must be a string")
    return value


def get_tokens(body: Mapping[str, Any], key: str, count: int) -> list[int]:
    """Optional fencing tokens parallel to a list of ids (0: none given; see
    :meth:`RestApi.resolve_tokens`)."""
    value = body.get(key)
    if value is None:
        return [0] * count
    if not isinstance(value, list) or len(value) != count:
        raise InvalidArgument.field(key, f"must be a list of {count} integers (one per document id)")
    tokens = []
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise InvalidArgument.field(f"{key}[{index}]", "must be a non-negative integer")
        tokens.append(item)
    return tokens


INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def get_priorities(body: Mapping[str, Any], key: str, count: int) -> list[int]:
    """Optional claim priorities parallel to a list of ids (``EnqueuedDocument.priority``:
    int32, lower is claimed first; absent: 0 for every id)."""
    value = body.get(key)
    if value is None:
        return [0] * count
    if not isinstance(value, list) or len(value) != count:
        raise InvalidArgument.field(key, f"must be a list of {count} integers (one per document id)")
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or not INT32_MIN <= item <= INT32_MAX:
            raise InvalidArgument.field(
                f"{key}[{index}]", f"must be an integer from {INT32_MIN} to {INT32_MAX}, got {item!r}"
            )
    return list(value)


# -- pipeline stage counts for /v2/metrics ----------------------------------------------------


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


async def stage_count_families(claimer: ClaimerClient) -> list[Metric]:
    """``layer_pipeline_stage_count{pipeline_id,stage}`` for every pipeline
    (``pending`` always present), and whether the claimer could be read."""
    counts = GaugeMetricFamily(
        "layer_pipeline_stage_count",
        "Documents per stage of each pipeline (lightweight queued ids included), the KEDA signal.",
        labels=["pipeline_id", "stage"],
    )
    up = GaugeMetricFamily(
        "layer_pipeline_status_up", "1 if the gateway could read pipeline status from the claimer."
    )
    try:
        pipelines = await claimer.list_pipelines()
        limit = asyncio.Semaphore(8)

        async def status(pipeline_id: str) -> pipeline_pb2.PipelineStatus | None:
            async with limit:
                try:
                    return await claimer.pipeline_status(pipeline_id)
                except ServiceError as error:
                    if error.code is grpc.StatusCode.NOT_FOUND:
                        return None  # deleted meanwhile
                    raise

        statuses = await asyncio.gather(*(status(p.id) for p in pipelines))
    except ServiceError as error:
        log.warning("cannot read pipeline status for /v2/metrics: %s", error.message)
        up.add_metric([], 0)
        return [up]
    for result in statuses:
        if result is None:
            continue
        stages = dict(result.counts)
        stages.setdefault("pending", result.pending_count)
        for stage, count in sorted(stages.items()):
            counts.add_metric([result.pipeline_id, stage], float(count))
    up.add_metric([], 1)
    return [counts, up]


# -- the routes --------------------------------------------------------------------------------


class RestApi:
    """The REST routes of the gateway."""

    def __init__(
        self,
        claimer: ClaimerClient,
        stager: Stager,
        reader: ChunkReader,
        writer: VectorWriter,
        searcher: Searcher,
    ) -> None:
        self.claimer = claimer
        self.stager = stager
        self.reader = reader
        self.writer = writer
        self.searcher = searcher

    @staticmethod
    def access_routes() -> dict[tuple[str, str], str]:
        """(HTTP method, path template) → the gRPC method whose role entry
        (:data:`hevlayer.client.methods.ACCESS`) the route needs; the routes not named
        here (``/v2/metrics``, ``/v2/openapi.json``) are open."""
        p = "/v2/pipelines/{pipeline_id}"
        return {
            ("POST", "/v2/pipelines"): f"/{PIPELINE_SERVICE}/CreatePipeline",
            ("GET", p + "/status"): f"/{PIPELINE_SERVICE}/GetPipelineStatus",
            ("POST", p + "/claim"): f"/{LEASE_SERVICE}/ClaimDocuments",
            ("POST", p + "/documents/heartbeat"): f"/{LEASE_SERVICE}/HeartbeatLeases",
            ("POST", p + "/documents/stage"): f"/{LEASE_SERVICE}/TransitionDocuments",
            ("PUT", p + "/documents/{document_id}"): f"/{STAGING_SERVICE}/StageDocuments",
            ("GET", p + "/documents/{document_id}/chunks"): f"/{STAGING_SERVICE}/ReadChunks",
            ("PUT", p + "/documents/{document_id}/vectors"): f"/{INDEX_SERVICE}/WriteVectors",
            ("POST", p + "/query"): f"/{INDEX_SERVICE}/Query",
        }

    PIPELINE_IN_BODY = {f"/{PIPELINE_SERVICE}/CreatePipeline": "id"}
    """Routes whose pipeline is a field of the JSON body, not of the path."""

    def routes(self) -> list[web.RouteDef]:
        """Every route, for :meth:`hevlayer.common.server.ServiceApp.add_routes`."""
        p = "/v2/pipelines/{pipeline_id}"
        return [
            web.post("/v2/pipelines", _handler(self.create_pipeline)),
            web.get(p + "/status", _handler(self.status)),
            web.post(p + "/claim", _handler(self.claim)),
            web.post(p + "/documents/heartbeat", _handler(self.heartbeat)),
            web.post(p + "/documents/stage", _handler(self.move)),
            web.put(p + "/documents/{document_id}", _handler(self.stage_document)),
            web.get(p + "/documents/{document_id}/chunks", _handler(self.chunks)),
            web.put(p + "/documents/{document_id}/vectors", _handler(self.vectors)),
            web.post(p + "/query", _handler(self.query)),
            web.get("/v2/metrics", _handler(self.metrics)),
            web.get("/v2/openapi.json", _handler(self.openapi)),
        ]

    async def resolve_tokens(self, pipeline_id: str, ids: list[str], tokens: list[int]) -> list[int]:
        """``tokens`` with each 0 (the seed's REST routes may name no token) replaced by the
        document's current fencing token, so that the call to the claimer names a lease (over
        gRPC 0 is no wildcard); the claimer still checks the worker, stage and expiry."""
        missing = [i for i, token in enumerate(tokens) if not token]
        if not missing:
            return tokens
        current = await self.claimer.current_tokens(pipeline_id, [ids[i] for i in missing])
        resolved = list(tokens)
        for i, token in zip(missing, current, strict=True):
            resolved[i] = token
        return resolved

    async def create_pipeline(self, request: web.Request) -> web.Response:
        """POST /v2/pipelines: create a pipeline (409 if it exists)."""
        body = await json_body(request)
        metric = get_str(body, "distance_metric", "cosine_distance")
        if metric not in METRIC_VALUES:
            raise InvalidArgument.field("distance_metric", f"must be one of {', '.join(METRIC_VALUES)}")
        queue = get_str(body, "queue_backend")
        if queue and queue not in QUEUE_VALUES:
            raise InvalidArgument.field("queue_backend", f"must be one of {', '.join(QUEUE_VALUES)}")
        sink = get_str(body, "sink")
        if sink and sink not in SINK_VALUES:
            raise InvalidArgument.field("sink", f"must be one of {', '.join(SINK_VALUES)}")
        pipeline = pipeline_pb2.Pipeline(
            id=get_str(body, "id", required=True),
            target_namespace=get_str(body, "target_namespace"),
            distance_metric=METRIC_VALUES[metric],
            paused=get_bool(body, "paused"),
            max_attempts=get_int(body, "max_attempts"),
            default_lease_seconds=get_int(body, "default_lease_seconds"),
            queue_backend=QUEUE_VALUES.get(queue, pipeline_pb2.QUEUE_BACKEND_UNSPECIFIED),
            sink=SINK_VALUES.get(sink, pipeline_pb2.SINK_UNSPECIFIED),
            dimension=get_int(body, "dimension"),
            summaries_enabled=get_bool(body, "summaries_enabled"),
        )
        created = await self.claimer.create_pipeline(pipeline_pb2.CreatePipelineRequest(pipeline=pipeline))
        return web.json_response(pipeline_json(created), status=201)

    async def status(self, request: web.Request) -> web.Response:
        """GET .../status: per-stage counts and pending_count (KEDA polls this)."""
        status = await self.claimer.pipeline_status(request.match_info["pipeline_id"])
        return web.json_response(
            {
                "pipeline_id": status.pipeline_id,
                "counts": dict(status.counts),
                "pending_count": status.pending_count,
            }
        )

    async def claim(self, request: web.Request) -> web.Response:
        """POST .../claim: lease up to ``limit`` documents of ``stage`` into ``claim_stage``."""
        body = await json_body(request)
        pipeline_id = request.match_info["pipeline_id"]
        response = await self.claimer.claim(
            lease_pb2.ClaimDocumentsRequest(
                pipeline_id=pipeline_id,
                stage=get_str(body, "stage", "pending"),
                claim_stage=get_str(body, "claim_stage", required=True),
                limit=get_int(body, "limit", 1),
                worker_id=get_str(body, "worker_id", required=True),
                lease_seconds=get_int(body, "lease_seconds"),
            )
        )
        return web.json_response(
            {"pipeline_id": pipeline_id, "documents": [lease_json(lease) for lease in response.leases]}
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        """POST .../documents/heartbeat: extend the worker's leases."""
        body = await json_body(request)
        pipeline_id = request.match_info["pipeline_id"]
        ids = get_str_list(body, "document_ids", required=True)
        tokens = await self.resolve_tokens(pipeline_id, ids, get_tokens(body, "fencing_tokens", len(ids)))
        response = await self.claimer.heartbeat(
            lease_pb2.HeartbeatLeasesRequest(
                pipeline_id=pipeline_id,
                stage=get_str(body, "stage", required=True),
                worker_id=get_str(body, "worker_id", required=True),
                leases=[
                    document_pb2.LeaseRef(document_id=d, fencing_token=t)
                    for d, t in zip(ids, tokens, strict=True)
                ],
                lease_seconds=get_int(body, "lease_seconds"),
            )
        )
        results = [
            {
                "document_id": r.document_id,
                "extended": r.extended,
                "expires_at": timestamp_json(r.expires_at) if r.extended else None,
            }
            for r in response.results
        ]
        return web.json_response(
            {
                "pipeline_id": pipeline_id,
                "results": results,
                "lost": [r.document_id for r in response.results if not r.extended],
            }
        )

    async def move(self, request: web.Request) -> web.Response:
        """POST .../documents/stage: move held documents, or enqueue ids (create_missing)."""
        body = await json_body(request)
        pipeline_id = request.match_info["pipeline_id"]
        ids = get_str_list(body, "document_ids", required=True)
        stage = get_str(body, "stage", required=True)
        if get_bool(body, "create_missing"):
            for key in ("from_stage", "worker_id", "fencing_tokens"):
                if body.get(key) is not None:
                    raise InvalidArgument.field(key, "must be absent with create_missing (ids are enqueued)")
            priorities = get_priorities(body, "priorities", len(ids))

            async def batches() -> AsyncIterator[staging_pb2.EnqueueDocumentsRequest]:
                # the columnar form: one string per id, no EnqueuedDocument message each
                yield staging_pb2.EnqueueDocumentsRequest(
                    pipeline_id=pipeline_id,
                    document_ids=ids,
                    priorities=priorities if any(priorities) else (),
                    stage=stage,
                    skip_unchanged=get_bool(body, "skip_unchanged"),
                )

            enqueued = await self.claimer.enqueue(batches(), timeout=self.claimer.timeout)
            check_columns_understood(len(ids), enqueued)  # a claimer from before document_ids
            return web.json_response(
                {
                    "pipeline_id": pipeline_id,
                    "enqueued": enqueued.enqueued,
                    "unchanged": enqueued.unchanged,
                    "segments_created": enqueued.segments_created,
                }
            )
        if body.get("priorities") is not None:
            raise InvalidArgument.field(
                "priorities", "only with create_missing (a priority is set when an id is enqueued)"
            )
        tokens = await self.resolve_tokens(pipeline_id, ids, get_tokens(body, "fencing_tokens", len(ids)))
        moves = await self.claimer.transition(
            pipeline_id,
            list(zip(ids, tokens, strict=True)),
            from_stage=get_str(body, "from_stage", required=True),
            worker_id=get_str(body, "worker_id", required=True),
            to_stage=stage,
            reason=get_str(body, "reason"),
        )
        return web.json_response(
            {
                "pipeline_id": pipeline_id,
                "results": [
                    {
                        "document_id": m.document_id,
                        "outcome": TRANSITION_NAMES.get(m.outcome, "unspecified"),
                        "fencing_token": m.fencing_token,
                    }
                    for m in moves
                ],
                "moved": sum(1 for m in moves if m.moved),
            }
        )

    async def stage_document(self, request: web.Request) -> web.Response:
        """PUT .../documents/{doc_id}: stage one document's chunks (resets it to pending)."""
        body = await json_body(request)
        pipeline_id = request.match_info["pipeline_id"]
        document_id = request.match_info["document_id"]
        document = document_pb2.Document(id=document_id, content_hash=get_str(body, "content_hash"))
        chunks = body.get("chunks")
        if chunks is None:
            raise InvalidArgument.field(
                "chunks", "is required (an empty list stages a document without chunks)"
            )
        if not isinstance(chunks, list):
            raise InvalidArgument.field("chunks", "must be a list of chunk objects")
        for index, chunk in enumerate(chunks):
            path = f"chunks[{index}]"
            if not isinstance(chunk, dict):
                raise InvalidArgument.field(path, "must be an object with id, text and metadata")
            added = document.chunks.add(id=_string(chunk, "id", path), text=_string(chunk, "text", path))
            metadata = chunk.get("metadata")
            if metadata is not None:
                if not isinstance(metadata, dict):
                    raise InvalidArgument.field(f"{path}.metadata", "must be a JSON object")
                added.metadata.CopyFrom(python_to_struct(metadata, f"{path}.metadata"))
        outcomes = await self.stager.stage(
            pipeline_id, [document], skip_unchanged=get_bool(body, "skip_unchanged"), path_prefix=lambda i: ""
        )
        outcome = outcomes[0]
        if outcome.error is not None:
            raise _rest_paths(outcome.error)
        answer: dict[str, JSONValue] = {
            "pipeline_id": pipeline_id,
            "document_id": document_id,
            "outcome": outcome.outcome,
            "fencing_token": outcome.fencing_token,
            "chunk_count": outcome.chunk_count,
        }
        if outcome.outcome == "staged":
            answer["stage"] = "pending"
        return web.json_response(answer)

    async def chunks(self, request: web.Request) -> web.Response:
        """GET .../documents/{doc_id}/chunks: the document's chunks in staging order.

        With ``worker_id`` and ``stage`` (and optionally ``fencing_token``) in
        the query string the worker's lease is checked (409 if not held).
        """
        pipeline_id = request.match_info["pipeline_id"]
        document_id = request.match_info["document_id"]
        worker_id = request.query.get("worker_id", "")
        stage = request.query.get("stage", "")
        token_text = request.query.get("fencing_token", "0")
        if not token_text.isdigit():
            raise InvalidArgument.field("fencing_token", "must be a non-negative integer")
        if stage and not worker_id:
            raise InvalidArgument.field("worker_id", "is required when stage is given")
        token = int(token_text)
        if worker_id and not token:
            [token] = await self.resolve_tokens(pipeline_id, [document_id], [token])
        async for document in self.reader.read(
            pipeline_id, worker_id, stage, [(document_id, token)], require_lease=bool(worker_id)
        ):
            if document.error is not None:
                raise document.error
            return web.json_response(
                {
                    "pipeline_id": pipeline_id,
                    "document_id": document_id,
                    "fencing_token": document.fencing_token,
                    "chunks": [chunk_json(chunk) for chunk in document.chunks],
                }
            )
        raise ServiceError("the chunk reader returned nothing")  # pragma: no cover

    async def vectors(self, request: web.Request) -> web.Response:
        """PUT .../documents/{doc_id}/vectors: replace the document's vectors and mark it indexed.

        The writer is the worker holding the document (``worker_id`` /
        ``from_stage`` / ``fencing_token`` in the body, or, absent, the
        current holder as the claimer reports it); 409 when nobody or
        somebody else holds it, 502 when the sink fails.
        """
        body = await json_body(request)
        pipeline_id = request.match_info["pipeline_id"]
        document_id = request.match_info["document_id"]
        raw = body.get("vectors")
        if not isinstance(raw, list):
            raise InvalidArgument.field("vectors", "is required: a list of {id, vector, attributes}")
        rows: list[Row] = []
        for index, vector in enumerate(raw):
            if not isinstance(vector, dict):
                raise InvalidArgument.field(
                    f"vectors[{index}]", "must be an object with id, vector, attributes"
                )
            values = vector.get("vector")
            if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise InvalidArgument.field(f"vectors[{index}].vector", "must be a list of numbers")
            attributes = vector.get("attributes") or {}
            if not isinstance(attributes, dict):
                raise InvalidArgument.field(f"vectors[{index}].attributes", "must be a JSON object")
            rows.append(
                Row(_string(vector, "id", f"vectors[{index}]"), [float(v) for v in values], attributes)
            )
        worker_id = get_str(body, "worker_id")
        from_stage = get_str(body, "from_stage")
        token = get_int(body, "fencing_token", maximum=UINT64_MAX)
        if not worker_id or not from_stage:
            state = await self.claimer.describe(pipeline_id, document_id)
            if not worker_id:
                if not state.claimed_by:
                    raise FailedPrecondition(
                        f"document {document_id!r} is not claimed (stage {state.stage!r}): claim it "
                        "(POST .../claim) before writing its vectors",
                        reason="NOT_CLAIMED",
                        violations=[Violation("worker_id", "the document has no holder")],
                    )
                worker_id = state.claimed_by
                token = token or state.fencing_token
            from_stage = from_stage or state.stage
        if not token:
            [token] = await self.resolve_tokens(pipeline_id, [document_id], [token])
        pipeline = await self.claimer.pipeline(pipeline_id, fresh=True)
        outcomes = await self.writer.write(
            pipeline, [DocumentVectors(document_id, token, worker_id, from_stage, rows)]
        )
        outcome = outcomes[0]
        if outcome.error is not None:
            raise outcome.error
        return web.json_response(
            {
                "pipeline_id": pipeline_id,
                "document_id": document_id,
                "outcome": outcome.outcome,
                "stage": "indexed",
                "vectors_written": outcome.vectors_written,
            }
        )

    async def query(self, request: web.Request) -> web.Response:
        """POST .../query: search the pipeline's index by ``text`` or by ``vector``.

        The same core as IndexService.Query: ``top_k`` 1 to 1000 (0 or
        absent: 10), ``filter`` an equality filter on attributes; hits best
        first with the attributes stored beside each vector (``text``, the
        chunk's metadata, ``document_id``, ``chunk_id``).
        """
        body = await json_body(request)
        pipeline_id = request.match_info["pipeline_id"]
        unknown = sorted(set(body) - QUERY_FIELDS)
        if unknown:
            raise InvalidArgument.field(
                unknown[0], f"is not a query field (expected {', '.join(sorted(QUERY_FIELDS))})"
            )
        text = body.get("text")
        if text is not None and not isinstance(text, str):
            raise InvalidArgument.field("text", f"must be a string, got {type(text).__name__}")
        vector = body.get("vector")
        if vector is not None:
            if not isinstance(vector, list):
                raise InvalidArgument.field("vector", "must be a list of numbers")
            for index, value in enumerate(vector):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InvalidArgument.field(f"vector[{index}]", f"must be a number, got {value!r}")
        filter_values = body.get("filter")
        if filter_values is None:
            filter_values = {}
        elif not isinstance(filter_values, dict):
            raise InvalidArgument.field("filter", "must be a JSON object of attribute: value")
        query = Query(
            text=text,
            vector=[float(v) for v in vector] if vector is not None else None,
            top_k=get_int(body, "top_k"),
            filter=filter_values,
        )
        try:
            hits = await self.searcher.query(pipeline_id, query)
        except InvalidArgument as error:
            raise _query_paths(error) from None
        return web.json_response(
            {
                "pipeline_id": pipeline_id,
                "hits": [
                    {
                        "document_id": hit.document_id,
                        "chunk_id": hit.chunk_id,
                        "score": hit.score,
                        "attributes": hit.attributes,
                    }
                    for hit in hits
                ],
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /v2/metrics: the gateway's metrics and every pipeline's stage counts."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(await stage_count_families(self.claimer)))
        body = metrics.render() + generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        """GET /v2/openapi.json: the OpenAPI document of these routes."""
        return web.json_response(openapi_document())


def _string(body: Mapping[str, Any], key: str, path: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise InvalidArgument.field(f"{path}.{key}", f"must be a string, got {type(value).__name__}")
    return value


QUERY_FIELDS = frozenset({"text", "vector", "top_k", "filter"})


def _query_paths(error: InvalidArgument) -> InvalidArgument:
    """Name the REST body's fields for the core's ``query`` (the gRPC oneof): ``text`` and ``vector``."""
    if not any(v.field == "query" for v in error.violations):
        return error
    renamed: list[Violation] = []
    for violation in error.violations:
        if violation.field == "query":
            renamed += [Violation("text", violation.description), Violation("vector", violation.description)]
        else:
            renamed.append(violation)
    first = renamed[0]
    fields = ", ".join(v.field for v in renamed if v.description == first.description)
    return InvalidArgument(f"{fields}: {first.description}", violations=renamed, reason=error.reason)


def _rest_paths(error: ServiceError) -> ServiceError:
    """Rename a staged document's ``id`` violation to the route's ``document_id``."""
    if not error.violations or not isinstance(error, InvalidArgument):
        return error
    renamed = [
        Violation("document_id" if v.field == "id" else v.field, v.description) for v in error.violations
    ]
    first = renamed[0]
    return InvalidArgument(f"{first.field}: {first.description}", violations=renamed)
