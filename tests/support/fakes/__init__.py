"""Faithful local fakes of services that cannot run in tests (see docs/sinks.md).

- ``turbopuffer``: the Turbopuffer HTTP API (SaaS only), for the gateway's Turbopuffer sink.
- ``llm``: an OpenAI-compatible chat-completions server, for the summarizer's LLM provider.

A fake stays only where the real service cannot run here or cannot produce the fault a test
injects; where the suite runs the real service (the embedder, the gateway), tests use it.
"""
