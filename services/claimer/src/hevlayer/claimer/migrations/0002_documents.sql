-- Documents, their leases, and the segmented queue of lightweight ids.
--
-- Per-stage counters (pipeline_stage_counts, migration 0001) are maintained
-- by statement-level triggers with transition tables: every statement that
-- inserts, moves or deletes documents or queue segments adjusts the counters
-- in the same transaction, grouped per (pipeline, stage) and in sorted order
-- (so two transactions never lock counter rows in opposite orders). A
-- document counts once in its stage; a queue segment counts its `remaining`
-- ids in its stage. Status therefore never scans documents.

-- One global sequence of fencing tokens: a token identifies one lease (or one
-- staging) of one document or segment. CACHE 1 keeps tokens increasing across
-- sessions, so a later lease of a document always has a larger token.
CREATE SEQUENCE fencing_token_seq CACHE 1;

-- Ids of queue segments (also the name of their manifest object). A pipeline
-- deletion takes a value as a fence: manifests with smaller ids belong to it.
CREATE SEQUENCE queue_segment_seq;

CREATE TABLE documents (
    pipeline_id      text             NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    -- Byte order ("C"): ScanDocuments is ordered by bytes, prefixes are ranges.
    document_id      text COLLATE "C" NOT NULL,
    stage            text             NOT NULL,
    -- Lease: all three set while leased, all NULL otherwise.
    claimed_by       text,
    claimed_at       timestamptz,
    lease_expires_at timestamptz,
    fencing_token    bigint           NOT NULL,
    -- Claims since the document was last staged or enqueued.
    attempts         integer          NOT NULL DEFAULT 0,
    -- Leases that expired since the document was last staged or enqueued.
    lease_expiries   integer          NOT NULL DEFAULT 0,
    last_error       text             NOT NULL DEFAULT '',
    content_hash     text             NOT NULL DEFAULT '',
    -- Where the gateway stored the chunks (opaque here).
    backing          text             NOT NULL DEFAULT '',
    chunk_count      integer          NOT NULL DEFAULT 0,
    update_time      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_id, document_id)
);

-- The claim index: only documents that can still be claimed (not indexed or
-- failed), so it stays small however many documents are done. Queries repeat
-- the predicate verbatim so that generic plans can use the index.
CREATE INDEX documents_claimable ON documents (pipeline_id, stage, lease_expires_at)
    WHERE stage <> ALL ('{indexed,failed}'::text[]);

CREATE TABLE queue_segments (
    segment_id       bigint      PRIMARY KEY,
    pipeline_id      text        NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    stage            text        NOT NULL,
    manifest_key     text        NOT NULL,
    -- Ids in the manifest, and those not yet transitioned out of the segment.
    id_count         integer     NOT NULL CHECK (id_count > 0),
    remaining        integer     NOT NULL CHECK (remaining >= 0 AND remaining <= id_count),
    -- Bitmap of manifest positions already transitioned (bit i = position i).
    done             bytea       NOT NULL DEFAULT '\x'::bytea,
    claimed_by       text,
    claimed_at       timestamptz,
    lease_expires_at timestamptz,
    fencing_token    bigint      NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    lease_expiries   integer     NOT NULL DEFAULT 0,
    create_time      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX queue_segments_claimable ON queue_segments (pipeline_id, stage, lease_expires_at, segment_id)
    WHERE remaining > 0;
CREATE UNIQUE INDEX queue_segments_token ON queue_segments (fencing_token);

-- Live documents per chunk object of the gateway (a backing up to its '#'),
-- maintained by RecordStaged and ForgetDocuments: an object is reported
-- released (and its row deleted) when its count reaches zero.
CREATE TABLE backing_objects (
    pipeline_id text   NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    object_key  text   NOT NULL,
    documents   bigint NOT NULL,
    PRIMARY KEY (pipeline_id, object_key)
);

-- Manifest objects to delete from S3 (superseded by a split, completed, or
-- of a deleted pipeline). Rows are written in the transaction that orphans
-- the object and removed once the object is deleted, so a crash between the
-- two leaves a row, never an unreferenced object.
CREATE TABLE segment_garbage (
    manifest_key text        PRIMARY KEY,
    create_time  timestamptz NOT NULL DEFAULT now()
);

-- Adds delta to one counter. Decrements of a missing row are ignored: they
-- happen only while the pipeline itself is being deleted (ON DELETE CASCADE).
CREATE FUNCTION bump_stage_count(p_pipeline text, p_stage text, p_delta bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_delta = 0 THEN
        RETURN;
    END IF;
    UPDATE pipeline_stage_counts SET count = count + p_delta
        WHERE pipeline_id = p_pipeline AND stage = p_stage;
    IF NOT FOUND AND p_delta > 0 THEN
        INSERT INTO pipeline_stage_counts AS c (pipeline_id, stage, count)
            VALUES (p_pipeline, p_stage, p_delta)
            ON CONFLICT (pipeline_id, stage) DO UPDATE SET count = c.count + EXCLUDED.count;
    END IF;
END;
$$;

CREATE FUNCTION documents_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR r IN SELECT n.pipeline_id, n.stage, count(*) AS delta FROM new_rows n
                 GROUP BY 1, 2 ORDER BY 1, 2 LOOP
            PERFORM bump_stage_count(r.pipeline_id, r.stage, r.delta);
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR r IN SELECT o.pipeline_id, o.stage, -count(*) AS delta FROM old_rows o
                 GROUP BY 1, 2 ORDER BY 1, 2 LOOP
            PERFORM bump_stage_count(r.pipeline_id, r.stage, r.delta);
        END LOOP;
    ELSE
        FOR r IN SELECT x.pipeline_id, x.stage, sum(x.d)::bigint AS delta FROM (
                     SELECT n.pipeline_id, n.stage, 1 AS d FROM new_rows n
                     UNION ALL
                     SELECT o.pipeline_id, o.stage, -1 AS d FROM old_rows o) x
                 GROUP BY 1, 2 HAVING sum(x.d) <> 0 ORDER BY 1, 2 LOOP
            PERFORM bump_stage_count(r.pipeline_id, r.stage, r.delta);
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER documents_counts_insert AFTER INSERT ON documents
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION documents_counts();
CREATE TRIGGER documents_counts_update AFTER UPDATE ON documents
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION documents_counts();
CREATE TRIGGER documents_counts_delete AFTER DELETE ON documents
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION documents_counts();

CREATE FUNCTION queue_segments_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR r IN SELECT n.pipeline_id, n.stage, sum(n.remaining) AS delta FROM new_rows n
                 GROUP BY 1, 2 ORDER BY 1, 2 LOOP
            PERFORM bump_stage_count(r.pipeline_id, r.stage, r.delta);
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR r IN SELECT o.pipeline_id, o.stage, -sum(o.remaining) AS delta FROM old_rows o
                 GROUP BY 1, 2 ORDER BY 1, 2 LOOP
            PERFORM bump_stage_count(r.pipeline_id, r.stage, r.delta);
        END LOOP;
    ELSE
        FOR r IN SELECT x.pipeline_id, x.stage, sum(x.d)::bigint AS delta FROM (
                     SELECT n.pipeline_id, n.stage, n.remaining::bigint AS d FROM new_rows n
                     UNION ALL
                     SELECT o.pipeline_id, o.stage, -o.remaining::bigint AS d FROM old_rows o) x
                 GROUP BY 1, 2 HAVING sum(x.d) <> 0 ORDER BY 1, 2 LOOP
            PERFORM bump_stage_count(r.pipeline_id, r.stage, r.delta);
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER queue_segments_counts_insert AFTER INSERT ON queue_segments
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION queue_segments_counts();
CREATE TRIGGER queue_segments_counts_update AFTER UPDATE ON queue_segments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION queue_segments_counts();
CREATE TRIGGER queue_segments_counts_delete AFTER DELETE ON queue_segments
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION queue_segments_counts();
