-- Pipelines and their per-stage document counters.
-- Counters are maintained in the same transactions that move documents, so
-- status never scans documents. Every counter change bumps a version taken
-- from status_version_seq and notifies 'hevlayer_status' with the pipeline
-- id (NOTIFY coalesces equal payloads within a transaction).

CREATE TABLE pipelines (
    id                    text PRIMARY KEY,
    target_namespace      text        NOT NULL,
    distance_metric       text        NOT NULL,
    paused                boolean     NOT NULL DEFAULT false,
    max_attempts          integer     NOT NULL,
    default_lease_seconds integer     NOT NULL,
    queue_backend         text        NOT NULL,
    sink                  text        NOT NULL,
    dimension             integer     NOT NULL DEFAULT 0,
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE status_version_seq;

CREATE TABLE pipeline_stage_counts (
    pipeline_id text   NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    stage       text   NOT NULL,
    count       bigint NOT NULL DEFAULT 0 CHECK (count >= 0),
    version     bigint NOT NULL DEFAULT nextval('status_version_seq'),
    PRIMARY KEY (pipeline_id, stage)
);

CREATE FUNCTION pipeline_stage_counts_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        NEW.version := nextval('status_version_seq');
    END IF;
    PERFORM pg_notify('hevlayer_status', NEW.pipeline_id);
    RETURN NEW;
END;
$$;

CREATE TRIGGER pipeline_stage_counts_touch
    BEFORE INSERT OR UPDATE ON pipeline_stage_counts
    FOR EACH ROW EXECUTE FUNCTION pipeline_stage_counts_touch();
