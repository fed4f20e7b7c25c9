-- Claim priority (EnqueuedDocument.priority): claims take the unleased documents of a stage
-- by (priority ASC, age ASC), the order of the seed's durable task queue
-- ("priority ASC, started_at ASC"). A document's age is its fencing token: every staging,
-- enqueue and transition draws a new token from one increasing sequence (CACHE 1,
-- migration 0002), so a smaller token means the document entered its stage earlier.
--
-- Enqueueing sets the priority (0 unless asked); staging and transitions keep it, so a
-- document enqueued for "extract" with priority -5 is also claimed early from "pending".
-- A NOT NULL column with a constant default: adding it rewrites nothing (existing rows
-- read 0).
ALTER TABLE documents ADD COLUMN priority integer NOT NULL DEFAULT 0;

-- The fresh half of the claim (lease_expires_at IS NULL) reads this index in order and
-- stops at the claim's limit. Partial like documents_claimable (migration 0002): leased,
-- indexed and failed documents are not in it, so it holds only the queued work. The
-- claim repeats the predicate verbatim so that generic plans can use it. Expired leases are
-- still found through documents_claimable, oldest expiry first, before any fresh document.
-- Building it scans documents once (a write lock while it builds; seconds per million
-- rows).
CREATE INDEX documents_claim_order ON documents (pipeline_id, stage, priority, fencing_token)
    WHERE lease_expires_at IS NULL AND stage <> ALL ('{indexed,failed}'::text[]);
