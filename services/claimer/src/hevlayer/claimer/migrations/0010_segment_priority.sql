-- Claim priority in the segmented queue (queue_backend segment): a segment holds ids of one
-- priority (an enqueue groups its ids by EnqueuedDocument.priority into separate segments;
-- a split, a transition into another worker stage and a reclaim keep it), and claims take
-- segments by (priority ASC, then enqueue order: queue_order below), the seed's "priority ASC, started_at ASC".
-- Within one priority an expired segment comes before a fresh one (it entered the stage
-- earlier); an expired segment of a larger priority waits behind fresh segments of a smaller
-- one, as documents do (leases.CLAIM_SQL).
--
-- A NOT NULL column with a constant default: adding it rewrites nothing (existing segments
-- read 0, the only priority the segment backend accepted before this migration).
ALTER TABLE queue_segments ADD COLUMN priority integer NOT NULL DEFAULT 0;

-- Enqueue order: the segment id of the segment an id was first queued in. A split gives both
-- halves the new segment ids it needs for their manifests but keeps the old segment's
-- queue_order, so the half left queued keeps its place instead of going behind every segment
-- enqueued since. queue_segments holds one row per segment of up to PIPELINE_SEGMENT_SIZE
-- ids, so the backfill touches few rows.
ALTER TABLE queue_segments ADD COLUMN queue_order bigint;
UPDATE queue_segments SET queue_order = segment_id;
ALTER TABLE queue_segments ALTER COLUMN queue_order SET NOT NULL;

-- The fresh half of a segment claim reads this index in order and stops at the first
-- segment it can lock. Partial like queue_segments_claimable: only the queued segments.
-- Claims repeat the predicate verbatim so that generic plans can use it. Expired segments
-- are still found through queue_segments_claimable (a range on lease_expires_at).
CREATE INDEX queue_segments_claim_order ON queue_segments (pipeline_id, stage, priority, queue_order)
    WHERE remaining > 0 AND lease_expires_at IS NULL;
