-- Pack objects the gateway's orphan sweep condemned (CondemnObjects;
-- docs/reliability.md, "Orphan packs and replicas"). With several gateways,
-- one may sweep a pack that another has written and is still recording
-- (RecordStaged in flight): age alone cannot tell the two apart. So the sweep
-- first condemns what it will delete, in one transaction that sees every
-- committed document; RecordStaged refuses a backing in a condemned object
-- (PACK_CONDEMNED). Both take a transaction-scoped advisory lock per object
-- key, so of a staging and a condemnation of one object exactly one wins.
--
-- Pack keys are never reused (creation time and random bits), so a row is
-- kept until its pipeline is deleted (rows exist only for actual orphans,
-- left by a gateway that died or lost RecordStaged's answer).
CREATE TABLE condemned_objects (
    pipeline_id text NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    object_key text NOT NULL,
    condemn_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_id, object_key)
);
