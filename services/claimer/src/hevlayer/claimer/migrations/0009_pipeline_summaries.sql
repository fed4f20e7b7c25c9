-- Pipeline.summaries_enabled: directory summaries (the Job Lane, the spec's
-- [summary].enabled) on by default for `hevlayer add` on this pipeline. The servers only
-- store it. A NOT NULL column with a constant default: adding it rewrites nothing
-- (existing pipelines read false).
ALTER TABLE pipelines ADD COLUMN summaries_enabled boolean NOT NULL DEFAULT false;
