"""Staging and reading documents: the transport-free core of StagingService and of the
REST document routes (deleting them is :mod:`hevlayer.gateway.documents`).

One concern per module, in the order a document meets them:

- :mod:`.validation`: the bounds on a document (field paths relative to it), the
  leases a StageDocuments message carries;
- :mod:`.group_commit`: :class:`Stager` encodes each valid document into a segment and
  queues it for its pipeline's group commit, which writes one pack object to S3 for the
  documents of any callers queued meanwhile and records them with the claimer in one
  ``RecordStaged``; its docstring follows one document from the call to the pack;
- :mod:`.sweep`: :class:`PackSweeper` deletes the packs no document points into (a
  refused or ambiguous ``RecordStaged``, a gateway stopped mid-way), condemning them
  through the claimer first;
- :mod:`.reading`: :class:`ChunkReader` reads documents' chunks back (cache first, then
  S3), for ReadChunks, the REST chunks route and WriteVectors' chunk-id check.

The names below are the package's surface; import them from here.
"""

from hevlayer.gateway.staging.group_commit import (
    MAX_REWRITES,
    PreparedDocument,
    StageOutcome,
    Stager,
    Submission,
)
from hevlayer.gateway.staging.reading import READ_WINDOW, ChunkReader, DocumentChunks, StagedChunkIds
from hevlayer.gateway.staging.sweep import PACK_CONDEMNED, PackSweeper, pack_created_ns
from hevlayer.gateway.staging.validation import (
    MAX_CONTENT_HASH_BYTES,
    MAX_DOCUMENT_ID_BYTES,
    MAX_VIOLATIONS,
    Limits,
    lease_tokens,
    metadata_too_large,
    rejection,
    struct_json_bytes,
    validate_document,
)

__all__ = [
    "MAX_CONTENT_HASH_BYTES",
    "MAX_DOCUMENT_ID_BYTES",
    "MAX_REWRITES",
    "MAX_VIOLATIONS",
    "PACK_CONDEMNED",
    "READ_WINDOW",
    "ChunkReader",
    "DocumentChunks",
    "Limits",
    "PackSweeper",
    "PreparedDocument",
    "StageOutcome",
    "StagedChunkIds",
    "Stager",
    "Submission",
    "lease_tokens",
    "metadata_too_large",
    "pack_created_ns",
    "rejection",
    "struct_json_bytes",
    "validate_document",
]
