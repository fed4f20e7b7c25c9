-- Which sink instance holds each pipeline's vectors (docs/reliability.md,
-- "Replicas"): two gateways on different Milvus Lite databases would each
-- write their own file and split one pipeline's index between them, each
-- answering queries from half of it. The first gateway that uses a pipeline's
-- sink binds the pipeline to its instance (BindSinkInstance); a gateway on
-- another instance is refused. A binding is never replaced, and goes with its
-- pipeline (ON DELETE CASCADE), so a re-created pipeline is bound afresh.
--
-- instance_id is a random id the sink keeps in its own storage (Milvus Lite:
-- a file inside the database directory); location is where the first gateway
-- opened it, for messages only.
CREATE TABLE pipeline_sink_bindings (
    pipeline_id text PRIMARY KEY REFERENCES pipelines (id) ON DELETE CASCADE,
    kind text NOT NULL,
    instance_id text NOT NULL CHECK (instance_id <> ''),
    location text NOT NULL,
    bind_time timestamptz NOT NULL DEFAULT now()
);
