-- The change log behind StagingService.WatchDocuments (hevlayer.claimer.changes).
--
-- Every statement that inserts, moves (a new stage or a new fencing token) or deletes
-- document rows appends one row per changed document to document_changes, numbered by a
-- per-pipeline sequence kept in document_change_heads, and notifies
-- 'hevlayer_document_changes' with the pipeline id. All of it happens in the transaction
-- that makes the change: a change that rolls back leaves no row and no notification
-- (NOTIFY is delivered on commit only).
--
-- Why the numbers follow commit order, without gaps: a change takes its numbers by updating
-- its pipeline's head row, which stays locked until the transaction ends, so the next
-- transaction of that pipeline numbers its changes only after this one committed (or rolled
-- back, releasing its numbers unused). A watcher that has read every change up to N
-- therefore never sees a change numbered N or less appear later. The cost is that the
-- document-moving transactions of one pipeline serialize from their first document statement
-- to their commit; they already did on the pipeline's per-stage counter rows (migration
-- 0002), which every claim and transition updates. The head is locked before those counters
-- in every statement (AFTER statement triggers fire in name order: documents_changes_* before
-- documents_counts_*); a transaction of the segmented queue that updated counters in an
-- earlier statement may deadlock with one that holds the head, and is retried
-- (hevlayer.claimer.txn.run retries deadlocks).
--
-- Ids of the segmented queue have no rows while queued; the claimer logs their moves to
-- indexed itself (log_document_changes). Rows older than CLAIMER_CHANGE_RETENTION_SECONDS are
-- deleted by the claimer; since the numbers have no gaps, a watcher that finds the change
-- after its cursor missing knows it was deleted and resyncs instead of missing changes.

CREATE TABLE document_change_heads (
    pipeline_id     text   PRIMARY KEY REFERENCES pipelines (id) ON DELETE CASCADE,
    -- Number of the pipeline's last change.
    last_seq        bigint NOT NULL DEFAULT 0
);

INSERT INTO document_change_heads (pipeline_id) SELECT id FROM pipelines;

CREATE FUNCTION pipelines_change_head() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO document_change_heads (pipeline_id) VALUES (NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER pipelines_change_head AFTER INSERT ON pipelines
    FOR EACH ROW EXECUTE FUNCTION pipelines_change_head();

CREATE TABLE document_changes (
    pipeline_id   text             NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    seq           bigint           NOT NULL,
    document_id   text COLLATE "C" NOT NULL,
    -- The stage entered; '' when the document was deleted.
    stage         text             NOT NULL,
    fencing_token bigint           NOT NULL,
    content_hash  text             NOT NULL,
    last_error    text             NOT NULL,
    change_time   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_id, seq)
);

-- The retention sweep deletes by age.
CREATE INDEX document_changes_time ON document_changes (change_time);

-- Appends the changes of one pipeline (in array order) and notifies its watchers. Nothing
-- when the pipeline has no head: it is being deleted (DeletePipeline removes the head first).
CREATE FUNCTION log_document_changes(
    p_pipeline text, p_ids text[], p_stages text[], p_tokens bigint[], p_hashes text[],
    p_errors text[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n bigint := coalesce(array_length(p_ids, 1), 0);
    head bigint;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    UPDATE document_change_heads SET last_seq = last_seq + n
        WHERE pipeline_id = p_pipeline RETURNING last_seq INTO head;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO document_changes (pipeline_id, seq, document_id, stage, fencing_token,
                                  content_hash, last_error)
    SELECT p_pipeline, head - n + u.ord, u.document_id, u.stage, u.token, u.hash, u.err
    FROM unnest(p_ids, p_stages, p_tokens, p_hashes, p_errors)
         WITH ORDINALITY AS u(document_id, stage, token, hash, err, ord);
    PERFORM pg_notify('hevlayer_document_changes', p_pipeline);
END;
$$;

CREATE FUNCTION documents_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR r IN SELECT n.pipeline_id,
                        array_agg(n.document_id ORDER BY n.document_id) AS ids,
                        array_agg(n.stage ORDER BY n.document_id) AS stages,
                        array_agg(n.fencing_token ORDER BY n.document_id) AS tokens,
                        array_agg(n.content_hash ORDER BY n.document_id) AS hashes,
                        array_agg(n.last_error ORDER BY n.document_id) AS errors
                 FROM new_rows n GROUP BY 1 ORDER BY 1 LOOP
            PERFORM log_document_changes(r.pipeline_id, r.ids, r.stages, r.tokens, r.hashes, r.errors);
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR r IN SELECT o.pipeline_id,
                        array_agg(o.document_id ORDER BY o.document_id) AS ids,
                        array_agg(''::text ORDER BY o.document_id) AS stages,
                        array_agg(o.fencing_token ORDER BY o.document_id) AS tokens,
                        array_agg(o.content_hash ORDER BY o.document_id) AS hashes,
                        array_agg(''::text ORDER BY o.document_id) AS errors
                 FROM old_rows o GROUP BY 1 ORDER BY 1 LOOP
            PERFORM log_document_changes(r.pipeline_id, r.ids, r.stages, r.tokens, r.hashes, r.errors);
        END LOOP;
    ELSE
        -- A heartbeat changes neither stage nor token: not a change.
        FOR r IN SELECT n.pipeline_id,
                        array_agg(n.document_id ORDER BY n.document_id) AS ids,
                        array_agg(n.stage ORDER BY n.document_id) AS stages,
                        array_agg(n.fencing_token ORDER BY n.document_id) AS tokens,
                        array_agg(n.content_hash ORDER BY n.document_id) AS hashes,
                        array_agg(n.last_error ORDER BY n.document_id) AS errors
                 FROM new_rows n
                 JOIN old_rows o ON o.pipeline_id = n.pipeline_id AND o.document_id = n.document_id
                 WHERE n.stage <> o.stage OR n.fencing_token <> o.fencing_token
                 GROUP BY 1 ORDER BY 1 LOOP
            PERFORM log_document_changes(r.pipeline_id, r.ids, r.stages, r.tokens, r.hashes, r.errors);
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER documents_changes_insert AFTER INSERT ON documents
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION documents_changes();
CREATE TRIGGER documents_changes_update AFTER UPDATE ON documents
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION documents_changes();
CREATE TRIGGER documents_changes_delete AFTER DELETE ON documents
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION documents_changes();
