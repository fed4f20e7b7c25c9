-- The trace of a document's journey (docs/operations.md, "The trace of a
-- document"): the W3C trace context ("traceparent" value) of the span that
-- staged the document, set by RecordStaged and handed to workers with every
-- lease of the document (Lease.trace_parent), so that staging, claim, chunk
-- read, embedding, vector write and the move to indexed are one trace.
-- NULL when none was recorded (rows staged before this migration, ids
-- enqueued without chunks). A nullable column without a default: adding it
-- rewrites nothing.
ALTER TABLE documents ADD COLUMN trace_parent text;
