-- API tokens (docs/security.md): each with one role and a scope of pipelines.
-- Only the SHA-256 of a token is stored (the token has 256 random bits, so a
-- plain hash cannot be reversed by guessing); id is its public prefix, used
-- to list and revoke it. A revoked token keeps its row (revoke_time set) so
-- that listings show who had access and when it ended.
CREATE TABLE api_tokens (
    id text PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('admin', 'stager', 'worker', 'reader')),
    all_pipelines boolean NOT NULL,
    pipeline_ids text[] NOT NULL DEFAULT '{}',
    create_time timestamptz NOT NULL DEFAULT now(),
    revoke_time timestamptz,
    CHECK (all_pipelines OR cardinality(pipeline_ids) > 0)
);
