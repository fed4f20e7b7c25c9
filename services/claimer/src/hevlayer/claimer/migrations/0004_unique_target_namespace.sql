-- One pipeline per namespace of a sink (docs/operations.md, "Isolation of
-- pipelines"): two pipelines writing into one namespace replace and delete
-- each other's rows, and each one's queries return the other's vectors.
-- CreatePipeline checks first and names the owner; this index makes the rule
-- hold when two creates race (the loser gets a unique violation, turned into
-- ALREADY_EXISTS naming the winner).
--
-- target_namespace is the effective namespace: CreatePipeline has always
-- stored the default (the id with '-' replaced by '_', the rule of
-- hevlayer.client.naming.default_namespace) when the request named none. The
-- UPDATE below fills any empty value the same way, so the index sees every
-- pipeline's real namespace.
--
-- An existing database may already hold pipelines that share a namespace.
-- Failing here would keep the claimer from starting, and renaming a namespace
-- would cut a pipeline off from its vectors, so those pipelines are kept as
-- they are and marked namespace_shared: the unique index covers every other
-- pipeline, CreatePipeline refuses the namespace of any pipeline, shared or
-- not, and the migration lists each shared namespace in a WARNING that the
-- claimer logs. The gateway's DeletePipeline keeps a namespace that another
-- pipeline still uses. Resolving them is the operator's call: see
-- docs/operations.md.

UPDATE pipelines SET target_namespace = replace(id, '-', '_') WHERE target_namespace = '';

ALTER TABLE pipelines ADD COLUMN namespace_shared boolean NOT NULL DEFAULT false;

UPDATE pipelines p SET namespace_shared = true
WHERE EXISTS (
    SELECT 1 FROM pipelines o
    WHERE o.sink = p.sink AND o.target_namespace = p.target_namespace AND o.id <> p.id
);

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT sink, target_namespace, string_agg(id, ', ' ORDER BY id) AS ids
             FROM pipelines WHERE namespace_shared
             GROUP BY sink, target_namespace ORDER BY sink, target_namespace LOOP
        RAISE WARNING 'pipelines % share namespace % of sink % (created before namespaces were unique); '
            'see docs/operations.md, "Isolation of pipelines"', r.ids, r.target_namespace, r.sink;
    END LOOP;
END;
$$;

CREATE UNIQUE INDEX pipelines_sink_namespace ON pipelines (sink, target_namespace)
    WHERE NOT namespace_shared;
