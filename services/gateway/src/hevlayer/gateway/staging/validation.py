"""Validating staged documents, before anything is stored.

Field paths are relative to the document (``id``, ``chunks[3].text``, ...); the adapters
put ``documents[i].`` or nothing in front (:func:`rejection`). A StageDocuments message's
leases are checked here too (:func:`lease_tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import json_format, struct_pb2

from hevlayer.api.document.v1 import document_pb2
from hevlayer.common.errors import InvalidArgument, Violation
from hevlayer.gateway.settings import StagingSettings

MAX_DOCUMENT_ID_BYTES = 512
MAX_CONTENT_HASH_BYTES = 256
MAX_VIOLATIONS = 20


@dataclass(frozen=True)
class Limits:
    """Bounds on staged documents."""

    max_chunk_text_bytes: int = 65536
    max_chunk_metadata_bytes: int = 16384
    max_chunk_id_bytes: int = 512
    max_chunks_per_document: int = 10000

    @classmethod
    def from_settings(cls, settings: StagingSettings) -> Limits:
        """From the gateway's staging settings."""
        return cls(
            settings.max_chunk_text_bytes,
            settings.max_chunk_metadata_bytes,
            settings.max_chunk_id_bytes,
            settings.max_chunks_per_document,
        )


def _too_long(text: str, limit: int) -> bool:
    return len(text) * 4 > limit and len(text.encode()) > limit


def struct_json_bytes(struct: struct_pb2.Struct) -> int:
    """Size of ``struct`` serialized as compact JSON (UTF-8)."""
    return len(
        json.dumps(json_format.MessageToDict(struct), separators=(",", ":"), ensure_ascii=False).encode()
    )


def metadata_too_large(struct: struct_pb2.Struct, limit: int) -> bool:
    """True if ``struct`` exceeds ``limit`` bytes as JSON.

    Its protobuf size bounds its JSON size within a factor of 6 (escapes
    and number formatting), so the exact JSON size is computed only for
    large values.
    """
    size = struct.ByteSize()
    if size * 6 + 16 <= limit:
        return False
    return struct_json_bytes(struct) > limit


def validate_document(document: document_pb2.Document, limits: Limits) -> list[Violation]:
    """Every problem of one document, with paths relative to it (at most 20)."""
    violations: list[Violation] = []
    doc_id = document.id
    if not doc_id:
        violations.append(Violation("id", "is required"))
    elif _too_long(doc_id, MAX_DOCUMENT_ID_BYTES):
        violations.append(Violation("id", f"must be at most {MAX_DOCUMENT_ID_BYTES} bytes"))
    elif "\x00" in doc_id:
        violations.append(Violation("id", "must not contain NUL characters"))
    if document.content_hash and _too_long(document.content_hash, MAX_CONTENT_HASH_BYTES):
        violations.append(Violation("content_hash", f"must be at most {MAX_CONTENT_HASH_BYTES} bytes"))
    chunks = document.chunks
    if len(chunks) > limits.max_chunks_per_document:
        violations.append(
            Violation(
                "chunks", f"at most {limits.max_chunks_per_document} chunks per document, got {len(chunks)}"
            )
        )
        return violations
    seen: dict[str, int] = {}
    max_id = limits.max_chunk_id_bytes
    max_text = limits.max_chunk_text_bytes
    max_meta = limits.max_chunk_metadata_bytes
    for j, chunk in enumerate(chunks):
        chunk_id = chunk.id
        if not chunk_id:
            violations.append(Violation(f"chunks[{j}].id", "is required"))
        elif _too_long(chunk_id, max_id):
            violations.append(Violation(f"chunks[{j}].id", f"must be at most {max_id} bytes"))
        elif chunk_id in seen:
            violations.append(
                Violation(
                    f"chunks[{j}].id", f"duplicate chunk id {chunk_id!r} (also chunks[{seen[chunk_id]}].id)"
                )
            )
        else:
            seen[chunk_id] = j
        if _too_long(chunk.text, max_text):
            violations.append(Violation(f"chunks[{j}].text", f"must be at most {max_text} bytes (UTF-8)"))
        if chunk.HasField("metadata") and metadata_too_large(chunk.metadata, max_meta):
            violations.append(Violation(f"chunks[{j}].metadata", f"must be at most {max_meta} bytes as JSON"))
        if len(violations) >= MAX_VIOLATIONS:
            break
    return violations


def lease_tokens(
    documents: Sequence[document_pb2.Document], leases: Sequence[tuple[str, int]]
) -> dict[str, int]:
    """Document id -> token of the leases a StageDocuments message carries.

    Each lease must name a document of the message, once, with a non-zero
    token; otherwise the whole message is refused (INVALID_ARGUMENT naming
    ``leases[i]``) before anything is stored.
    """
    if not leases:
        return {}
    names = {document.id for document in documents}
    tokens: dict[str, int] = {}
    for i, (document_id, token) in enumerate(leases):
        if document_id not in names:
            raise InvalidArgument.field(
                f"leases[{i}].document_id", f"{document_id!r} is not a document of this request"
            )
        if document_id in tokens:
            raise InvalidArgument.field(f"leases[{i}].document_id", f"{document_id!r} appears twice")
        if token <= 0:
            raise InvalidArgument.field(f"leases[{i}].fencing_token", "must be > 0")
        tokens[document_id] = token
    return tokens


def rejection(violations: Sequence[Violation], prefix: str = "") -> InvalidArgument:
    """An InvalidArgument for a document's violations, paths prefixed with ``prefix``."""
    moved = [Violation(prefix + v.field, v.description) for v in violations]
    first = moved[0]
    more = f" (and {len(moved) - 1} more)" if len(moved) > 1 else ""
    return InvalidArgument(f"{first.field}: {first.description}{more}", violations=moved)
