"""The OpenAPI 3.1 document of the gateway's REST routes.

Built here (the gateway serves it at ``GET /v2/openapi.json``) and written
to ``docs/openapi.yaml`` with ``python -m hevlayer.gateway.openapi >
docs/openapi.yaml``; a test checks that the file matches and that every
route and live answer conforms.
"""

from __future__ import annotations

import sys
from typing import Any

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    schema.update(extra)
    return schema


STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer", "minimum": 0}
BOOL: dict[str, Any] = {"type": "boolean"}
STAMP: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
STR_LIST: dict[str, Any] = {"type": "array", "items": STR}
JSON_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "error": _obj(
                {
                    "code": {"type": "integer", "description": "The HTTP status."},
                    "status": {"type": "string", "description": "The gRPC status code name."},
                    "message": STR,
                    "reason": {"type": "string", "description": "google.rpc.ErrorInfo reason."},
                    "field_violations": {
                        "type": "array",
                        "items": _obj({"field": STR, "description": STR}, ["field", "description"]),
                    },
                    "metadata": {"type": "object", "additionalProperties": STR},
                    "retry_after_seconds": {"type": "number"},
                },
                ["code", "status", "message", "reason"],
            )
        },
        ["error"],
    ),
    "CreatePipelineRequest": _obj(
        {
            "id": {**STR, "description": "1-63 lowercase letters, digits and '-', starting with a letter."},
            "target_namespace": {
                **STR,
                "description": "Index namespace; defaults to the id with '-' -> '_'.",
            },
            "distance_metric": {"type": "string", "enum": ["cosine_distance", "euclidean_squared"]},
            "paused": BOOL,
            "max_attempts": INT,
            "default_lease_seconds": INT,
            "queue_backend": {"type": "string", "enum": ["segment", "row"]},
            "sink": {"type": "string", "enum": ["milvus_lite", "milvus", "turbopuffer"]},
            "dimension": INT,
            "summaries_enabled": {
                **BOOL,
                "description": "Directory summaries on by default for `hevlayer add` (the Job Lane).",
            },
        },
        ["id"],
    ),
    "Pipeline": _obj(
        {
            "id": STR,
            "target_namespace": STR,
            "distance_metric": {"type": "string", "enum": ["cosine_distance", "euclidean_squared"]},
            "paused": BOOL,
            "max_attempts": INT,
            "default_lease_seconds": INT,
            "queue_backend": {"type": ["string", "null"], "enum": ["segment", "row", None]},
            "sink": {"type": ["string", "null"], "enum": ["milvus_lite", "milvus", "turbopuffer", None]},
            "dimension": INT,
            "summaries_enabled": BOOL,
            "create_time": STAMP,
            "update_time": STAMP,
        },
        ["id", "target_namespace", "distance_metric"],
    ),
    "ChunkInput": _obj(
        {
            "id": {**STR, "description": "Unique within the document."},
            "text": STR,
            "metadata": JSON_OBJECT,
        },
        ["id"],
    ),
    "StageDocumentRequest": _obj(
        {
            "chunks": {"type": "array", "items": _ref("ChunkInput")},
            "content_hash": {**STR, "description": "Optional; computed from the chunks when absent."},
            "skip_unchanged": {
                **BOOL,
                "description": "Leave the document as is if its content hash matches.",
            },
        },
        ["chunks"],
    ),
    "StageDocumentResponse": _obj(
        {
            "pipeline_id": STR,
            "document_id": STR,
            "outcome": {"type": "string", "enum": ["staged", "unchanged"]},
            "stage": {"type": "string", "enum": ["pending"]},
            "fencing_token": INT,
            "chunk_count": INT,
        },
        ["pipeline_id", "document_id", "outcome", "fencing_token", "chunk_count"],
    ),
    "PipelineStatus": _obj(
        {
            "pipeline_id": STR,
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "pending_count": {"type": "integer"},
        },
        ["pipeline_id", "counts", "pending_count"],
    ),
    "ClaimRequest": _obj(
        {
            "stage": {**STR, "default": "pending"},
            "claim_stage": STR,
            "limit": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1},
            "worker_id": STR,
            "lease_seconds": {**INT, "description": "0 or absent: the pipeline's default."},
        },
        ["claim_stage", "worker_id"],
    ),
    "Lease": _obj(
        {
            "document_id": STR,
            "stage": STR,
            "worker_id": STR,
            "fencing_token": INT,
            "expires_at": STAMP,
            "attempts": INT,
            "content_hash": STR,
            "chunk_count": INT,
        },
        ["document_id", "stage", "worker_id", "fencing_token", "expires_at"],
    ),
    "ClaimResponse": _obj(
        {"pipeline_id": STR, "documents": {"type": "array", "items": _ref("Lease")}},
        ["pipeline_id", "documents"],
    ),
    "HeartbeatRequest": _obj(
        {
            "document_ids": STR_LIST,
            "stage": STR,
            "worker_id": STR,
            "lease_seconds": INT,
            "fencing_tokens": {"type": "array", "items": INT, "description": "Optional, one per id."},
        },
        ["document_ids", "stage", "worker_id"],
    ),
    "HeartbeatResponse": _obj(
        {
            "pipeline_id": STR,
            "results": {
                "type": "array",
                "items": _obj(
                    {"document_id": STR, "extended": BOOL, "expires_at": STAMP}, ["document_id", "extended"]
                ),
            },
            "lost": STR_LIST,
        },
        ["pipeline_id", "results", "lost"],
    ),
    "StageRequest": _obj(
        {
            "document_ids": STR_LIST,
            "stage": {
                **STR,
                "description": "Target stage: indexed, pending (release), failed, or a worker stage.",
            },
            "from_stage": STR,
            "worker_id": STR,
            "reason": {**STR, "description": "Why, for stage failed."},
            "fencing_tokens": {"type": "array", "items": INT},
            "create_missing": {
                **BOOL,
                "description": "Enqueue the ids as lightweight documents (without from_stage/worker_id).",
            },
            "skip_unchanged": BOOL,
            "priorities": {
                "type": "array",
                "items": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
                "description": "With create_missing: the claim priority of each id (one per "
                "document id; lower is claimed first, then oldest first; default 0).",
            },
        },
        ["document_ids", "stage"],
    ),
    "TransitionResponse": _obj(
        {
            "pipeline_id": STR,
            "results": {
                "type": "array",
                "items": _obj(
                    {
                        "document_id": STR,
                        "outcome": {
                            "type": "string",
                            "enum": ["moved", "not_held", "not_found", "unspecified"],
                        },
                        "fencing_token": INT,
                    },
                    ["document_id", "outcome", "fencing_token"],
                ),
            },
            "moved": INT,
        },
        ["pipeline_id", "results", "moved"],
    ),
    "EnqueueResponse": _obj(
        {"pipeline_id": STR, "enqueued": INT, "unchanged": INT, "segments_created": INT},
        ["pipeline_id", "enqueued", "unchanged", "segments_created"],
    ),
    "ChunksResponse": _obj(
        {
            "pipeline_id": STR,
            "document_id": STR,
            "fencing_token": INT,
            "chunks": {
                "type": "array",
                "items": _obj({"id": STR, "text": STR, "metadata": JSON_OBJECT}, ["id", "text"]),
            },
        },
        ["pipeline_id", "document_id", "chunks"],
    ),
    "VectorsRequest": _obj(
        {
            "vectors": {
                "type": "array",
                "items": _obj(
                    {
                        "id": {**STR, "description": "The chunk id the vector was computed from."},
                        "vector": {"type": "array", "items": {"type": "number"}},
                        "attributes": JSON_OBJECT,
                    },
                    ["id", "vector"],
                ),
            },
            "worker_id": {**STR, "description": "Default: the document's current holder."},
            "from_stage": {**STR, "description": "Default: the document's current stage."},
            "fencing_token": {**INT, "description": "0 or absent: the holder's current lease."},
        },
        ["vectors"],
    ),
    "VectorsResponse": _obj(
        {
            "pipeline_id": STR,
            "document_id": STR,
            "outcome": {"type": "string", "enum": ["indexed"]},
            "stage": {"type": "string", "enum": ["indexed"]},
            "vectors_written": INT,
        },
        ["pipeline_id", "document_id", "outcome", "vectors_written"],
    ),
    "QueryRequest": _obj(
        {
            "text": {
                **STR,
                "description": "Text, embedded by the embedding service before searching. Exactly one of "
                "text and vector.",
            },
            "vector": {
                "type": "array",
                "items": {"type": "number"},
                "description": "A query vector of the pipeline's dimension. Exactly one of text and vector.",
            },
            "top_k": {
                "type": "integer",
                "minimum": 0,
                "maximum": 1000,
                "default": 10,
                "description": "Number of hits, 1 to 1000 (0 or absent: 10).",
            },
            "filter": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
                "description": "Equality filter on attributes: every key must equal its value (AND).",
            },
        },
        additionalProperties=False,
        oneOf=[{"required": ["text"]}, {"required": ["vector"]}],
    ),
    "QueryHit": _obj(
        {
            "document_id": STR,
            "chunk_id": STR,
            "score": {"type": "number", "description": "Higher is better (1 - distance for cosine)."},
            "attributes": {
                **JSON_OBJECT,
                "description": "Stored beside the vector: text, the chunk's metadata, document_id, chunk_id.",
            },
        },
        ["document_id", "chunk_id", "score", "attributes"],
    ),
    "QueryResponse": _obj(
        {"pipeline_id": STR, "hits": {"type": "array", "items": _ref("QueryHit")}},
        ["pipeline_id", "hits"],
    ),
}

_ERRORS = {
    "400": "Invalid request (the body names the field).",
    "404": "Pipeline or document not found.",
    "409": "Conflict: already exists, or the lease is not held.",
    "500": "The claimer / PostgreSQL failed; retry with backoff.",
    "502": "A dependency (sink, S3, embedder) failed; retry with backoff.",
}


def _errors(*codes: str, **descriptions: str) -> dict[str, Any]:
    """Error answers; ``descriptions`` (``e409=...``) replace the generic ones."""
    return {
        code: {
            "description": descriptions.get(f"e{code}", _ERRORS[code]),
            "content": {JSON: {"schema": _ref("Error")}},
        }
        for code in codes
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


PIPELINE_ID = {"name": "pipeline_id", "in": "path", "required": True, "schema": STR}
DOCUMENT_ID = {"name": "document_id", "in": "path", "required": True, "schema": STR}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict)."""
    p = "/v2/pipelines/{pipeline_id}"
    paths: dict[str, Any] = {
        "/v2/pipelines": {
            "post": {
                "operationId": "createPipeline",
                "summary": "Create a pipeline.",
                "requestBody": _body(_ref("CreatePipelineRequest")),
                "responses": {
                    "201": _json("The created pipeline.", _ref("Pipeline")),
                    **_errors("400", "409", "500"),
                },
            }
        },
        p + "/documents/{document_id}": {
            "put": {
                "operationId": "stageDocument",
                "summary": "Stage a document's chunks (S3 + cache); it becomes pending.",
                "parameters": [PIPELINE_ID, DOCUMENT_ID],
                "requestBody": _body(_ref("StageDocumentRequest")),
                "responses": {
                    "200": _json("The document is staged.", _ref("StageDocumentResponse")),
                    **_errors("400", "404", "500", "502"),
                },
            }
        },
        p + "/status": {
            "get": {
                "operationId": "getPipelineStatus",
                "summary": "Per-stage counts and pending_count (KEDA polls this).",
                "parameters": [PIPELINE_ID],
                "responses": {
                    "200": _json("The pipeline's status.", _ref("PipelineStatus")),
                    **_errors("404", "500"),
                },
            }
        },
        p + "/claim": {
            "post": {
                "operationId": "claimDocuments",
                "summary": "Lease documents of a stage into a claim stage.",
                "parameters": [PIPELINE_ID],
                "requestBody": _body(_ref("ClaimRequest")),
                "responses": {
                    "200": _json("The leases granted (possibly none).", _ref("ClaimResponse")),
                    **_errors("400", "404", "500"),
                },
            }
        },
        p + "/documents/heartbeat": {
            "post": {
                "operationId": "heartbeatDocuments",
                "summary": "Extend leases held by a worker.",
                "parameters": [PIPELINE_ID],
                "requestBody": _body(_ref("HeartbeatRequest")),
                "responses": {
                    "200": _json("Which leases were extended.", _ref("HeartbeatResponse")),
                    **_errors("400", "404", "500"),
                },
            }
        },
        p + "/documents/stage": {
            "post": {
                "operationId": "moveDocuments",
                "summary": "Move held documents to a stage, or enqueue ids (create_missing).",
                "parameters": [PIPELINE_ID],
                "requestBody": _body(_ref("StageRequest")),
                "responses": {
                    "200": _json(
                        "Per-document outcomes, or enqueue totals with create_missing.",
                        {"oneOf": [_ref("TransitionResponse"), _ref("EnqueueResponse")]},
                    ),
                    **_errors("400", "404", "500"),
                },
            }
        },
        p + "/documents/{document_id}/chunks": {
            "get": {
                "operationId": "readChunks",
                "summary": "A document's chunks in staging order (cache, then S3).",
                "parameters": [
                    PIPELINE_ID,
                    DOCUMENT_ID,
                    {
                        "name": "worker_id",
                        "in": "query",
                        "required": False,
                        "schema": STR,
                        "description": "Check this worker's lease (409 if not held).",
                    },
                    {"name": "stage", "in": "query", "required": False, "schema": STR},
                    {"name": "fencing_token", "in": "query", "required": False, "schema": INT},
                ],
                "responses": {
                    "200": _json("The chunks.", _ref("ChunksResponse")),
                    **_errors("400", "404", "409", "500", "502"),
                },
            }
        },
        p + "/documents/{document_id}/vectors": {
            "put": {
                "operationId": "writeVectors",
                "summary": "Replace the document's vectors in the sink and mark it indexed.",
                "parameters": [PIPELINE_ID, DOCUMENT_ID],
                "requestBody": _body(_ref("VectorsRequest")),
                "responses": {
                    "200": _json("The document is indexed.", _ref("VectorsResponse")),
                    **_errors("400", "404", "409", "500", "502"),
                },
            }
        },
        p + "/query": {
            "post": {
                "operationId": "query",
                "summary": "Search the pipeline's index by text or by vector (IndexService.Query).",
                "parameters": [PIPELINE_ID],
                "requestBody": _body(_ref("QueryRequest")),
                "responses": {
                    "200": _json("Hits, best first (possibly none).", _ref("QueryResponse")),
                    **_errors(
                        "400",
                        "404",
                        "409",
                        "500",
                        "502",
                        e400="Invalid query (the body names the field: text, vector, top_k, filter.<key>).",
                        e404="Pipeline not found.",
                        e409="A text query, but the gateway has no embedding service (EMBEDDER_ADDRESS).",
                        e502="The sink or the embedding service failed; retry with backoff.",
                    ),
                },
            }
        },
        "/v2/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics, layer_pipeline_stage_count{pipeline_id,stage} included.",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": STR}},
                    }
                },
            }
        },
        "/v2/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": _json("The OpenAPI document.", JSON_OBJECT)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hevlayer gateway",
            "version": "2",
            "description": (
                "The pipeline routes of the hevlayer gateway. Every route has a gRPC twin "
                "(hevlayer.api.*.v1); errors carry the gRPC status name and field violations."
            ),
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


def main() -> None:
    """Print the document as YAML (``docs/openapi.yaml``)."""
    sys.stdout.write(openapi_yaml())


def openapi_yaml() -> str:
    """The document as YAML, as ``docs/openapi.yaml`` holds it."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return (
        "# Generated by `python -m hevlayer.gateway.openapi > docs/openapi.yaml`; do not edit.\n"
        + yaml.dump(openapi_document(), Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)
    )


if __name__ == "__main__":
    main()
