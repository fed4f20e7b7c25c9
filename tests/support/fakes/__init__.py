"""Faithful local fakes of services that cannot run in tests (see docs/sinks.md).

- ``turbopuffer``: the Turbopuffer HTTP API (SaaS only), for the gateway's Turbopuffer sink.
- ``aerospike``: the part of ``aerospike.Client`` the gateway's Aerospike chunk cache uses.
- ``llm``: an OpenAI-compatible chat-completions server, for the summarizer's LLM provider.
- ``vision``: an OpenAI-compatible vision endpoint, for image descriptions (``hevlayer.ingest``).
- ``pipeline_service``: a PipelineService whose failures and stalls a test scripts, for the
  client's retries and deadlines.
- ``staging``: a StagingService that refuses the first streams UNAVAILABLE (the real gateway
  cannot be made to), for the summarizer's retry of a staging outage.

A fake stays only where the real service cannot run here or cannot produce the fault a test
injects; where the suite runs the real service (the embedder, the gateway), tests use it.
"""
