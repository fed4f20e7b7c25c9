-- The change log only for pipelines somebody watches (hevlayer.claimer.changes).
--
-- Until 0012 every statement that moved documents wrote one document_changes row per changed
-- document in every pipeline, watched or not, and every id of the segmented queue moved to
-- indexed was one more row. Now a pipeline's changes are logged only while its
-- document_change_heads.watched_until is in the future. The claimer sets it when a
-- WatchChanges stream opens, and moves it on while streams are open, to the claimer's clock +
-- CLAIMER_CHANGE_RETENTION_SECONDS (+ twice its refresh interval): a cursor can only come from
-- a watch, so logging stays on for at least the retention after the last cursor was issued.
--
-- Turning logging on (watch_document_changes) never loses a change and always reveals a
-- period without logging:
--
-- - A statement that finds logging off takes the pipeline's change-log advisory lock in shared
--   mode (held to its commit) and reads the flag again; watch_document_changes takes it in
--   exclusive mode. So when the watch's transaction sets the flag, no transaction that skipped
--   logging is still open (it committed: the snapshot the watch takes afterwards shows its
--   change), and every statement after the commit logs. Statements that find logging on take
--   no advisory lock: they lock the head row, as before.
-- - When logging was off (the flag is in the past or NULL, read with the clock after the
--   exclusive lock: every transaction that skipped logging started before that), turning it
--   on skips a number: last_seq + 1 has no change. A cursor issued before the period without
--   logging therefore finds the change after it missing, exactly like a swept one, and resyncs.
--
-- Cost for a pipeline nobody watches: per statement and pipeline, one read of its head row and
-- one shared advisory lock (lock manager memory, no row written); no row, no head update, no
-- NOTIFY. The segmented queue asks document_changes_logged before it reads the manifests of ids
-- moved to indexed, and logs nothing when it is off.

ALTER TABLE document_change_heads ADD COLUMN watched_until timestamptz;

-- Whether the pipeline's changes are logged in this transaction (see above). VOLATILE: in READ
-- COMMITTED each of its queries sees what committed before it, the second one what committed
-- before the shared lock was granted.
CREATE FUNCTION document_changes_logged(p_pipeline text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    until timestamptz;
BEGIN
    SELECT watched_until INTO until FROM document_change_heads WHERE pipeline_id = p_pipeline;
    IF NOT FOUND THEN
        RETURN false;  -- the pipeline is being deleted
    END IF;
    IF until > now() THEN
        RETURN true;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1751672934, hashtext(p_pipeline));
    SELECT watched_until INTO until FROM document_change_heads WHERE pipeline_id = p_pipeline;
    RETURN coalesce(until > now(), false);
END;
$$;

-- Turn logging on (or keep it on) for p_seconds from now; returns the head's number. Run in a
-- transaction of its own, committed before the watch reads anything.
CREATE FUNCTION watch_document_changes(p_pipeline text, p_seconds double precision) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1751672934, hashtext(p_pipeline));
    UPDATE document_change_heads
        SET last_seq = last_seq + CASE WHEN watched_until > clock_timestamp() THEN 0 ELSE 1 END,
            watched_until = greatest(watched_until, clock_timestamp() + make_interval(secs => p_seconds))
        WHERE pipeline_id = p_pipeline
        RETURNING last_seq INTO head;
    RETURN head;
END;
$$;

CREATE OR REPLACE FUNCTION log_document_changes(
    p_pipeline text, p_ids text[], p_stages text[], p_tokens bigint[], p_hashes text[],
    p_errors text[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n bigint := coalesce(array_length(p_ids, 1), 0);
    head bigint;
BEGIN
    IF n = 0 OR NOT document_changes_logged(p_pipeline) THEN
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

-- As in 0012, with the check first: the pipelines of the statement (one, almost always) are
-- found from the new (or old) rows alone, and a pipeline whose changes are not logged costs
-- nothing more; for updates the join that finds the real changes runs only for logged ones.
CREATE OR REPLACE FUNCTION documents_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    p text;
    n bigint;
    head bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        FOR p IN SELECT DISTINCT pipeline_id FROM new_rows ORDER BY 1 LOOP
            CONTINUE WHEN NOT document_changes_logged(p);
            SELECT count(*) INTO n FROM new_rows WHERE pipeline_id = p;
            UPDATE document_change_heads SET last_seq = last_seq + n
                WHERE pipeline_id = p RETURNING last_seq INTO head;
            CONTINUE WHEN NOT FOUND;  -- the pipeline is being deleted
            INSERT INTO document_changes (pipeline_id, seq, document_id, stage, fencing_token,
                                          content_hash, last_error)
            SELECT nr.pipeline_id, head - n + row_number() OVER (ORDER BY nr.document_id),
                   nr.document_id, nr.stage, nr.fencing_token, nr.content_hash, nr.last_error
            FROM new_rows nr WHERE nr.pipeline_id = p;
            PERFORM pg_notify('hevlayer_document_changes', p);
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR p IN SELECT DISTINCT pipeline_id FROM old_rows ORDER BY 1 LOOP
            CONTINUE WHEN NOT document_changes_logged(p);
            SELECT count(*) INTO n FROM old_rows WHERE pipeline_id = p;
            UPDATE document_change_heads SET last_seq = last_seq + n
                WHERE pipeline_id = p RETURNING last_seq INTO head;
            CONTINUE WHEN NOT FOUND;
            INSERT INTO document_changes (pipeline_id, seq, document_id, stage, fencing_token,
                                          content_hash, last_error)
            SELECT o.pipeline_id, head - n + row_number() OVER (ORDER BY o.document_id),
                   o.document_id, '', o.fencing_token, o.content_hash, ''
            FROM old_rows o WHERE o.pipeline_id = p;
            PERFORM pg_notify('hevlayer_document_changes', p);
        END LOOP;
    ELSE
        FOR p IN SELECT DISTINCT pipeline_id FROM new_rows ORDER BY 1 LOOP
            CONTINUE WHEN NOT document_changes_logged(p);
            -- A heartbeat changes neither stage nor token: not a change.
            SELECT count(*) INTO n FROM new_rows nr
                JOIN old_rows o ON o.pipeline_id = nr.pipeline_id AND o.document_id = nr.document_id
                WHERE nr.pipeline_id = p
                  AND (nr.stage <> o.stage OR nr.fencing_token <> o.fencing_token);
            CONTINUE WHEN n = 0;
            UPDATE document_change_heads SET last_seq = last_seq + n
                WHERE pipeline_id = p RETURNING last_seq INTO head;
            CONTINUE WHEN NOT FOUND;
            INSERT INTO document_changes (pipeline_id, seq, document_id, stage, fencing_token,
                                          content_hash, last_error)
            SELECT nr.pipeline_id, head - n + row_number() OVER (ORDER BY nr.document_id),
                   nr.document_id, nr.stage, nr.fencing_token, nr.content_hash, nr.last_error
            FROM new_rows nr
            JOIN old_rows o ON o.pipeline_id = nr.pipeline_id AND o.document_id = nr.document_id
            WHERE nr.pipeline_id = p
              AND (nr.stage <> o.stage OR nr.fencing_token <> o.fencing_token);
            PERFORM pg_notify('hevlayer_document_changes', p);
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;
